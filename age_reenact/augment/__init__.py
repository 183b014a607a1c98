"""ControlNet pose augmenter: face pose maps from 68 landmarks, a 3D landmark template for pose edits,
offline SD1.5 + ControlNet loading through diffusers, and the augmenter itself.

diffusers/transformers are optional (the `augment` extra); only `diffusers_loading` imports them, and
only inside its functions.
"""
