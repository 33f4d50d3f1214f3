"""Loads a run's model.py and model.safetensors in PyTorch (strict state_dict) and compares the
logits on export_check.safetensors' inputs with partrain's: prints the largest difference and
exits non-zero above the tolerance.

    python tests/export_check.py RUN_DIR [TOLERANCE]
"""
import importlib.util
import sys

import safetensors.torch
import torch

run = sys.argv[1]
tolerance = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-5
spec = importlib.util.spec_from_file_location("model", f"{run}/model.py")
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)
net = model.Net()
net.load_state_dict(safetensors.torch.load_file(f"{run}/model.safetensors"), strict=True)
net.eval()
check = safetensors.torch.load_file(f"{run}/export_check.safetensors")
with torch.no_grad():
    logits = net(check["input"])
diff = (logits - check["logits"]).abs().max().item()
print(f"{run}: max |logits pytorch - partrain| = {diff:.3e} ({sum(p.numel() for p in net.parameters())} parameters)")
sys.exit(0 if diff <= tolerance else 1)
