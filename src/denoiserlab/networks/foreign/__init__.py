"""Adapters that load networks trained by other code bases as denoisers den(x, sigma).

`edm_pickle`: NVlabs/edm `network-snapshot-*.pkl` files (code-executing pickles, opt-in only), with our own
stand-ins for the EDM modules those pickles refer to (`edm_standins`). `diffusers_unet`: diffusers `UNet2DModel`
folders with a DDPM-style (variance-preserving) scheduler, converted to the EDM convention (`vp_conversion`).
"""
