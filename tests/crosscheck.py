"""PyTorch cross-check of a partrain run (run by tests/pytorch_crosscheck.rs with the venv's torch):

    .venv/bin/python tests/crosscheck.py RUN_DIR DATA_DIR TEST_LIMIT

Builds seed 001's net in PyTorch, loads RUN_DIR/model.safetensors with strict=True, evaluates the
same MNIST test slice and asserts the accuracy in RUN_DIR/summary.json to 0.01 points.
"""
import json
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


class MnistCnn(nn.Module):
    """seed 001: Conv(1,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - FC(3136,128)-ReLU-Dropout - FC(128,10)"""

    def __init__(self, dropout=0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(3136, 128)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, 1, rows, cols)
    assert magic == 0x801, f"{path}: bad magic {magic:#x}"
    return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8).long()


def main():
    run_dir, data_dir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = MnistCnn()
    model.load_state_dict(load_file(f"{run_dir}/model.safetensors"), strict=True)
    model.eval()
    images = read_idx(f"{data_dir}/t10k-images-idx3-ubyte")[:limit].float() / 255.0
    images = (images - 0.1307) / 0.3081
    labels = read_idx(f"{data_dir}/t10k-labels-idx1-ubyte")[:limit]
    with torch.no_grad():
        accuracy = 100.0 * (model(images).argmax(1) == labels).float().mean().item()
    reported = json.load(open(f"{run_dir}/summary.json"))["final_test_accuracy"]
    print(f"pytorch accuracy {accuracy:.4f}%, partrain summary {reported:.4f}%")
    assert abs(accuracy - reported) <= 0.01, f"PyTorch {accuracy} vs partrain {reported}"


if __name__ == "__main__":
    main()
