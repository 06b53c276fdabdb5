"""The ground floor of Conditional Segment-wise Generation, shared by sampling, training and data.

layout.py     how a clip is cut into windows (the planner, WindowLayout, neighbour slots)
inputs.py     what the DiT sees for a window (gathered blocks, [latent, z_ref], timesteps) and
              the conditioning-channel rule
reference.py  the one hybrid-reference builder (bicubic upsampling, frame 0 := the image) and
              the anchor latent
degradation.py  Stage I-like low-res videos (and a latent blur) for training references

Nothing here imports sampling, training or data: they all import this.
"""
