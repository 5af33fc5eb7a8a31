#!/usr/bin/env bash
# Shipping a task, checked on a CUDA GPU (one prepared script, a few minutes; CI has none):
# 1. export an AdaptFormer task of ViT-B/16 (random weights) as torch.export and ONNX, then run the programs on the
#    GPU: the torch.export program moved to CUDA, the ONNX one through onnxruntime's CUDA (or TensorRT) provider
#    when the image has onnxruntime-gpu (else it says so); outputs against eager CUDA, and images/s at batch 32;
# 2. the Open Inference Protocol against a CUDA server: plain JSON infer (pixel_values and a base64 image) equal
#    to POST /predict/{task}.
#   bash benchmarks/gpu_check_ship.sh            (from the repository root; PYTHONPATH=src on a bare image)
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-src}"
OUT="${OUT:-/tmp/gpu-check-ship}"
mkdir -p "$OUT/tasks"
python - "$OUT" <<'PY'
import sys, time, torch, timm, adaptformer
from pathlib import Path
from safetensors.torch import save_file
from adaptformer.export import export_model
out = Path(sys.argv[1])
torch.manual_seed(12345)
save_file(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).state_dict(), str(out / "vit.safetensors"))
model = adaptformer.create_model("vit_base_patch16_224", "adaptformer", num_classes=100, checkpoint=out / "vit.safetensors")
adaptformer.save_task(model, out / "tasks" / "shipped.safetensors")
formats = ["torch-export"]
try:
    import onnxruntime
    formats.append("onnx")
    print("onnxruntime providers:", onnxruntime.get_available_providers())
except ImportError:
    print("onnxruntime is not installed in this image: ONNX checked on CPU only (CI)")
x = torch.randn(32, 3, 224, 224, device="cuda")
eager = model.cuda().eval()
with torch.no_grad():
    reference = eager(x)
for fmt in formats:
    exported = export_model(model.cpu(), out / fmt, fmt)
    print(fmt, "exported; CPU check", exported.manifest["check"]["max_abs_difference"])
    if fmt == "torch-export":
        program = torch.export.load(str(out / fmt / "model.pt2")).module().to("cuda")
        run = lambda: program(x)[0]
    else:
        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in onnxruntime.get_available_providers()]
        if not providers:
            print("onnx: no GPU provider in this onnxruntime; skipped")
            continue
        session = onnxruntime.InferenceSession(str(out / fmt / "model.onnx"), providers=providers)
        run = lambda: torch.from_numpy(session.run(["logits"], {"pixel_values": x.cpu().numpy()})[0]).cuda()
    with torch.no_grad():
        got = run(); torch.cuda.synchronize(); start = time.perf_counter()
        for _ in range(5):
            got = run()
        torch.cuda.synchronize()
    print(f"{fmt} on CUDA: max |program - eager| {(got - reference.to(got.device)).abs().max().item():.2e}, "
          f"{5 * 32 / (time.perf_counter() - start):.1f} images/s")
PY
PORT=8765
python -m adaptformer serve --task-dir "$OUT/tasks" --checkpoint "$OUT/vit.safetensors" --device cuda --port $PORT > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -fs "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 1; done
python - "$PORT" <<'PY'
import base64, io, json, sys, urllib.request
import numpy as np
from PIL import Image
from adaptformer.data.transforms import InputSpec
from adaptformer.media import image_tensor
url = f"http://127.0.0.1:{sys.argv[1]}"
def call(path, body=None, form=None):
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": form or "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())
buffer = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(buffer, "PNG")
png = buffer.getvalue()
meta = call("/v2/models/shipped")
print("metadata inputs:", meta["inputs"])
pixels = image_tensor(Image.open(io.BytesIO(png)).convert("RGB"), InputSpec.from_dict(meta["parameters"]["preprocessing"]))
as_tensor = call("/v2/models/shipped/infer", json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, *pixels.shape], "datatype": "FP32", "data": pixels.flatten().tolist()}]}).encode())
as_image = call("/v2/models/shipped/infer", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}]}).encode())
boundary = "x" * 16
form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
predict = call("/predict/shipped?top_k=1", form, f"multipart/form-data; boundary={boundary}")
p1 = np.array(as_tensor["outputs"][0]["data"]); p2 = np.array(as_image["outputs"][0]["data"])
print(f"v2 on CUDA: |pixel_values - image| {np.abs(p1 - p2).max():.2e}; top label {as_image['outputs'][1]['data'][0]} vs /predict {predict['top_k'][0]['label']}")
PY
