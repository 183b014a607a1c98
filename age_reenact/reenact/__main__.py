"""`python -m age_reenact.reenact RFG.ckpt IDSG.ckpt out.safetensors`: convert the official dual-generator files."""
from .convert import main

main()
