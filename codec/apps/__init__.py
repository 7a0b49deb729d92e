"""codec.apps: what else the fitted model is good for: exploring and editing a video through its autoencoder.

explore.py (latent map, averages, clusters), edit.py (slow motion, textures, stitch, stretch, extrapolate,
object removal), pixelcodes.py (hypercolumns, correspondences, mask propagation), figures.py (the PNGs)
and cli.py (`vsae explore`, `vsae edit`, `vsae mask-check`, registered by codec/cli.py). They use the
codec core; the core never imports them.
"""
