#!/bin/bash
# How experiment=camvid was chosen: six recipes, each with the step budget that ~55 minutes
# buy on the 2-core CPU (0.70-0.73 s/step in bf16), run side by side on one GPU (same steps and
# batches, so the same learning problem; an H200 ran all six in 7.5 minutes).
#   DATA=/path/to/camvid bash benchmarks/camvid_sweep.sh      # results: logs/train/sweep_*/
# Results of 2026-11-26: benchmarks/results/camvid_b0_sweep.json.
set -u
DATA=${DATA:-../shared/data/camvid}
# median-frequency weights from `segformer-check-data data=camvid`, and their square roots
MFB="[0.2793,0.2017,4.7865,0.149,1.0,0.4217,3.8467,1.9736,0.7889,6.3747,8.8587]"
SQRT="[0.5285,0.4491,2.1878,0.386,1.0,0.6494,1.9613,1.4048,0.8882,2.5248,2.9764]"
common=(experiment=camvid "data.root=$DATA" trainer.accelerator=gpu model.class_weights=null
  data.crop_size=[256,256] data.batch_size=8 trainer.max_steps=4500 trainer.val_check_interval=1500
  trainer.enable_progress_bar=false trainer.num_sanity_val_steps=0 callbacks=none logger=csv
  data.num_workers=2 print_config=false)
run() { name=$1; shift; python -m segformer.train "${common[@]}" run_name=sweep_$name "$@" \
  > "logs/sweep_$name.log" 2>&1 & }
mkdir -p logs
run A_plain
run B_mfb "model.class_weights=$MFB"
run C_sqrt_mfb "model.class_weights=$SQRT"
run D_sqrt_mfb_lr2e-3 "model.class_weights=$SQRT" optimizer.lr=2e-3
run E_sqrt_mfb_192x16 "model.class_weights=$SQRT" data.crop_size=[192,192] data.batch_size=16 \
  trainer.max_steps=4000 trainer.val_check_interval=1000
run F_mfb_lr2e-3 "model.class_weights=$MFB" optimizer.lr=2e-3
wait
grep -h "^val/mIoU" logs/sweep_*.log
