"""Quality evaluation: image metrics and the demo's SwiftI2V-vs-upsampling check."""
