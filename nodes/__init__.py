"""ComfyUI nodes: thin adapters from ComfyUI types and services to the core package."""
from . import agetransgan_nodes, augment_nodes, chain_nodes, estimator_nodes, face_nodes, identity_nodes, reenact_nodes

_MODULES = (face_nodes, estimator_nodes, agetransgan_nodes, identity_nodes, reenact_nodes, augment_nodes, chain_nodes)

NODE_CLASS_MAPPINGS = {node_id: cls for module in _MODULES for node_id, (cls, _) in module.NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: title for module in _MODULES for node_id, (_, title) in module.NODES.items()}
