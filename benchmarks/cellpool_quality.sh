#!/usr/bin/env bash
# Quality of cell pooling and self-training against the reference demo ensemble (7+14/best), on demo data made with
# an S0 seed nobody tuned on. Everything goes to a scratch folder (default
# /tmp/cellpool_quality); input/ and output/ of the repo are not touched.
#
#   bash benchmarks/cellpool_quality.sh                  # S0 --SEED 7, 160 train + 64 test images
#   SEED=11 N_TRAIN=320 N_TEST=64 bash benchmarks/cellpool_quality.sh
#   SELF_TRAIN=0 bash benchmarks/cellpool_quality.sh     # skip the S4.2 run of the reference runs' self-training
#   ST_CP=0 ...                                          # skip the cell-pool-teacher rows (and the p2f1 control)
#   WORK=/tmp/cq23 SEED=23 N_TEST=128 STRIDES=8 SELF_TRAIN=0 bash benchmarks/cellpool_quality.sh  # docs/EXPERIMENTS.md's seed 23
#   WORK=/tmp/cq41 SEED=41 N_TEST=128 STRIDES=8 SELF_TRAIN=0 CKPT=last.pth bash benchmarks/cellpool_quality.sh  # seed 41
#   WORK=/tmp/cq53 SEED=53 N_TEST=256 ST_CP=0 SELF_TRAIN=0 CKPT=last.pth bash benchmarks/cellpool_quality.sh   # seed 53
#
# Rows (each S6 line: strict / lenient mAP, and the paired-bootstrap delta against the 7+14/best row):
#   7+14/best      demo_p1 (masked) + demo_p2, cell x image, each run's best.pth (the reference, always)
#   7+14/last      the same runs' last.pth (the final epoch, not the one a 32-image fold picked)
#   3+16/last      run_all.sh's demo recipe, at the reference's training cost: pipeline 1 for
#                  DEMO_P1_EPOCHS (3), the CPU time saved moved to pipeline 2 (DEMO_P2_EPOCHS, 16), both
#                  read at last.pth (DEMO=0 skips it)
#   CKPT           the checkpoint every other row (and the pseudo-label teachers) reads: best.pth | last.pth
#   cellpool/S     the same checkpoints, pipeline 1 scored with P1_VARIANT=cellpool at stride S
#   cp-trained     demo_p1 trained with VARIANT=cellpool at CP_STRIDE (+ demo_p2), scored by cellpool
#   self-train     pipeline 2 on FOLD 1 with / without the pseudo-labels of the fold-0 runs (fold-0
#                  images are the only ones they may label), each with demo_p1, cell x image
#                  (p2f1 / p2f1-pseudo: teachers = the reference demo_p1 + demo_p2; SELF_TRAIN=1)
#   st-cp          the self-training round at the reference's cost: the cell-pool-trained pipeline 1 (cp-trained,
#                  fold 0) is the teacher; pipeline 2 on FOLD 1 learns its pseudo-labels of the fold-0
#                  images. st-cp = that pipeline 2 alone (cell x its image prediction); st-cp+p1cp = the
#                  two pipelines (p1cp + st-cp, cell x image)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
W=${WORK:-/tmp/cellpool_quality}
SEED=${SEED:-7}; N_TRAIN=${N_TRAIN:-160}; N_TEST=${N_TEST:-64}; STRIDES=${STRIDES-"32 16 8"}  # STRIDES="" skips the cellpool rows
SELF_TRAIN=${SELF_TRAIN:-1}; ST_CP=${ST_CP:-1}; CP_STRIDE=${CP_STRIDE:-16}  # output stride of the cell-pool-trained run
CKPT=${CKPT:-best.pth}  # checkpoint of every row but 7+14/best, 7+14/last and 3+16/last
DEMO=${DEMO:-1}; DEMO_P1_EPOCHS=${DEMO_P1_EPOCHS:-3}; DEMO_P2_EPOCHS=${DEMO_P2_EPOCHS:-16}  # run_all.sh's demo epochs
COMP=$W/comp; HPA=$W/hpa512; OUT=$W/out
export PYTHONUNBUFFERED=1
t0=$SECONDS
log() { echo "=== [$((SECONDS - t0)) s] $*"; }

P1=(--MODEL_NAME resnet18 --PRETRAINED false --IMAGE_SIZE 128 --EPOCHS 7 --BATCH_SIZE 16 --LR 1e-3
    --WARMUP_EPOCHS 1 --NUM_WORKERS 0 --LOSS bce --HPA512_DIR "$HPA" --OUTPUT_DIR "$OUT")
P2=(--MODEL_NAME resnet18 --PRETRAINED false --CELL_SIZE 64 --CELLS_PER_IMAGE 8 --EPOCHS 14 --BATCH_SIZE 8
    --LR 2e-3 --WARMUP_EPOCHS 1 --NUM_WORKERS 0 --VAL_EVERY 2 --CELL_VAL_MAX_IMAGES 32
    --HPA512_DIR "$HPA" --TRAIN_CSV "$HPA/train_all.csv" --COMPETITION_DIR "$COMP" --OUTPUT_DIR "$OUT")
S5=(--TTA 2 --MULTIPLY_IMAGE_PRED true --COMPETITION_DIR "$COMP" --HPA512_DIR "$HPA" --N_OVERLAYS 0 --CHECKPOINT "$CKPT")

log S0; $PY S0_make_demo_data.py --SEED "$SEED" --N_TRAIN "$N_TRAIN" --N_TEST "$N_TEST" --COMPETITION_DIR "$COMP" >/dev/null
log S2; $PY S2_data_process.py --COMPETITION_DIR "$COMP" --HPA512_DIR "$HPA" --NUM_WORKERS 2 >/dev/null
log "S3 masked"; $PY S3_train_pipeline1.py "${P1[@]}" --RUN_NAME demo_p1 | tail -1
log "S3 cellpool"; $PY S3_train_pipeline1.py "${P1[@]}" --VARIANT cellpool --CELLPOOL_STRIDE "$CP_STRIDE" \
  --RUN_NAME demo_p1cp | tail -1
log S4.1; $PY S4.1_crop_cells.py --CELL_SIZE 64 --NUM_WORKERS 2 --HPA512_DIR "$HPA" \
  --TRAIN_CSV "$HPA/train_all.csv" --COMP_TRAIN_DIR "$COMP/train" --EXT_TRAIN_DIR "$COMP/train_external" | tail -1
log S4.2; $PY S4.2_train_pipeline2.py "${P2[@]}" --RUN_NAME demo_p2 | tail -1
if [ "$DEMO" = 1 ]; then
  log "S3 3+16 ($DEMO_P1_EPOCHS epochs)"; $PY S3_train_pipeline1.py "${P1[@]}" --EPOCHS "$DEMO_P1_EPOCHS" --RUN_NAME demo316_p1 | tail -1
  log "S4.2 3+16 ($DEMO_P2_EPOCHS epochs)"; $PY S4.2_train_pipeline2.py "${P2[@]}" --EPOCHS "$DEMO_P2_EPOCHS" --RUN_NAME demo316_p2 | tail -1
fi

predict() {  # name, S5 arguments...
  local name=$1; shift
  log "S5 $name"
  $PY S5_predict.py "${S5[@]}" --OUTPUT_DIR "$OUT/s5_$name" "$@" | grep -E "s/image" || true
}
score() {  # name
  local out
  out=$($PY S6_evaluate.py --SUBMISSION "$OUT/s5_$1/submission.csv" --TRUTH "$COMP/test_cells.csv" \
        --PLOTS false --BASELINE "$OUT/s5_ref/submission.csv" 2>&1 | grep -E "^(mAP|delta)_" | tr '\n' ' ')
  printf '%-14s %s\n' "$1" "$out" | tee -a "$W/results.txt"
}
predict ref --RUNS "$OUT/demo_p1/fold0,$OUT/demo_p2/fold0" --CHECKPOINT best.pth
predict ref-last --RUNS "$OUT/demo_p1/fold0,$OUT/demo_p2/fold0" --CHECKPOINT last.pth
if [ "$DEMO" = 1 ]; then predict demo316 --RUNS "$OUT/demo316_p1/fold0,$OUT/demo316_p2/fold0" --CHECKPOINT last.pth; fi
for s in $STRIDES; do
  st=$s; [ "$s" = 32 ] && st=0
  predict "cellpool$s" --RUNS "$OUT/demo_p1/fold0,$OUT/demo_p2/fold0" --P1_VARIANT cellpool --P1_CELLPOOL_STRIDE "$st"
done
predict cp-trained --RUNS "$OUT/demo_p1cp/fold0,$OUT/demo_p2/fold0"
if [ "$SELF_TRAIN" = 1 ] || [ "$ST_CP" = 1 ]; then
  log "S4.2 fold 1 (no pseudo-labels)"; $PY S4.2_train_pipeline2.py "${P2[@]}" --FOLD 1 --RUN_NAME p2_f1 | tail -1
  predict p2f1 --RUNS "$OUT/demo_p1/fold0,$OUT/p2_f1/fold1"
fi
if [ "$ST_CP" = 1 ]; then
  log "pseudo-labels of the cell-pool-trained pipeline 1 (fold 0 labels fold-0 images)"
  $PY tools/make_pseudo_labels.py --HPA512_DIR "$HPA" --COMPETITION_DIR "$COMP" --TTA 2 --CHECKPOINT "$CKPT" \
    --RUNS "$OUT/demo_p1cp/fold0" --OUT_CSV "$W/pseudo_labels_cp.csv" | tail -1
  log "S4.2 fold 1 + cell-pool pseudo-labels"; $PY S4.2_train_pipeline2.py "${P2[@]}" --FOLD 1 \
    --RUN_NAME p2_f1_cp --PSEUDO_LABELS "$W/pseudo_labels_cp.csv" | tail -1
  predict st-cp --RUNS "$OUT/p2_f1_cp/fold1"
  predict st-cp+p1cp --RUNS "$OUT/demo_p1cp/fold0,$OUT/p2_f1_cp/fold1"
fi
if [ "$SELF_TRAIN" = 1 ]; then
  log "pseudo-labels (fold-0 runs label fold-0 images)"
  $PY tools/make_pseudo_labels.py --HPA512_DIR "$HPA" --COMPETITION_DIR "$COMP" --TTA 2 --CHECKPOINT "$CKPT" \
    --RUNS "$OUT/demo_p1/fold0,$OUT/demo_p2/fold0" --OUT_CSV "$W/pseudo_labels.csv" | tail -1
  log "S4.2 fold 1 + pseudo-labels"; $PY S4.2_train_pipeline2.py "${P2[@]}" --FOLD 1 --RUN_NAME p2_f1_pl \
    --PSEUDO_LABELS "$W/pseudo_labels.csv" | tail -1
  predict p2f1-pseudo --RUNS "$OUT/demo_p1/fold0,$OUT/p2_f1_pl/fold1"
fi
: > "$W/results.txt"
echo; echo "Cell-level mAP on $N_TEST test images (S0 seed $SEED); delta = row - ref (7+14/best), paired bootstrap:"
for d in "$OUT"/s5_*/; do score "$(basename "$d" | sed 's/^s5_//')"; done
if [ "$SELF_TRAIN" = 1 ]; then
  $PY S6_evaluate.py --SUBMISSION "$OUT/s5_p2f1-pseudo/submission.csv" --TRUTH "$COMP/test_cells.csv" \
    --PLOTS false --BASELINE "$OUT/s5_p2f1/submission.csv" 2>&1 | grep -E "^delta_" | sed 's/^/self-training vs same fold without: /'
fi
if [ "$ST_CP" = 1 ]; then
  $PY S6_evaluate.py --SUBMISSION "$OUT/s5_st-cp+p1cp/submission.csv" --TRUTH "$COMP/test_cells.csv" \
    --PLOTS false --BASELINE "$OUT/s5_ref/submission_image_level.csv" 2>&1 | grep -E "^delta_" \
    | sed 's/^/st-cp+p1cp vs the image-level broadcast of ref: /'
fi
log done
