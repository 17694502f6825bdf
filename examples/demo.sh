#!/usr/bin/env bash
# medkit demo on the shipped NIH ChestX-ray14 subset (1,000 chest X-rays at 64 px, 14 findings, patient ids):
#   audit (finds the 30 patients that sit in two splits; BreastMNIST's cross-split duplicates) -> leakage-free 5-fold split -> train fold 0 on CPU
#   -> out-of-fold predictions. Takes a few minutes on a laptop CPU. Usage: bash examples/demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-out}
DATA=examples/data/nih1000
if [ -e "$OUT" ]; then
  if [ -f "$OUT/.medkit-demo" ]; then rm -rf "$OUT"; else echo "$OUT exists and is not a demo folder" >&2; exit 2; fi
fi
mkdir -p "$OUT" && touch "$OUT/.medkit-demo"

echo "== 1. audit: what is wrong with the data?" >&2
# Exit code 1 means "problems found": this dataset's own split puts 30 patients in two splits.
medkit audit "$DATA" --labels "$DATA/labels.csv" --out "$OUT/audit" || [ $? -eq 1 ]

echo "== 1b. audit the shipped BreastMNIST archive image by image: its published splits share pictures" >&2
medkit audit examples/data/breastmnist.npz --out "$OUT/audit-breastmnist" || [ $? -eq 1 ]

echo "== 2. split: 5 folds by patient, labels balanced, duplicate clusters kept whole" >&2
medkit split "$OUT/audit/labels_clean.csv" --n-folds 5 --group patient_id \
  --duplicates "$OUT/audit/duplicates.csv" --out "$OUT/folds.csv"

echo "== 3. train: chest X-ray task (14 labels), ResNet-18 at 64 px, validation on fold 0" >&2
medkit train cxr --data "$DATA" --labels "$OUT/folds.csv" --fold 0 --model resnet18 --img-size 64 \
  --epochs 3 --batch-size 64 --out "$OUT/runs/cxr-fold0"

echo "== done: $OUT/runs/cxr-fold0 holds run.json, metrics.csv, curve.png, checkpoints/ and oof.csv" >&2
