"""campipe.effects: semantic camera effects, each a pure function on float32 linear working-space RGB (H, W, 3) plus
float32 soft masks (H, W) in [0, 1], wrapped as a registered pipeline stage in :mod:`campipe.effects.stages`.

Modules (one effect each):

* :mod:`.styles` — photographic styles (tone, warmth, colour) that keep skin at the standard render (``style``);
* :mod:`.subject_tone` — per-person exposure/contrast towards a face target, sky untouched (``subject_tone``);
* :mod:`.bokeh` — portrait mode: thin-lens disc bokeh in linear light without halos, grain re-added (``portrait``);
* :mod:`.stage_light` — Stage Light / Stage Light Mono (``stage_light``, ``stage_light_mono``);
* :mod:`.denoise` — noise-model-driven guided-filter denoising, stronger on sky and skin (``denoise``);
* :mod:`.sharpen` — luminance unsharp masking with coring, suppressed on sky/skin/teeth (``sharpen``);
* :mod:`.noise` — the sensor noise model (metadata or estimated) and grain synthesis; :mod:`.masks` — mask helpers.

A missing mask is zeros: the effect is not applied there. Importing this package does not register stages; the
registry imports :mod:`campipe.effects.stages` lazily.
"""
