"""AgeReenact: facial age transformation and face reenactment nodes for ComfyUI.

ComfyUI imports this file as a package under whatever name the folder was cloned as, so everything
inside the pack is imported relatively.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
