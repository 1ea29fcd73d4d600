#!/bin/bash
# How the CamVid recipe was chosen by a validation on a drive no training frame comes from, and
# how far the standard val split sits from such a drive. One 2-core CPU, one run at a time.
#   DATA=/path/to/camvid bash benchmarks/camvid_grouped.sh     # ~8 h on 2 cores
# Results of 2026-12-02: benchmarks/results/camvid_grouped.json (seen vs unseen drive) and
# benchmarks/results/camvid_grouped_variants.json (the recipe variants, the chosen one).
set -eu
CE=(model.loss=null)  # plain cross-entropy: the loss of parts 1 and 2 (before OHEM was chosen)
DATA=${DATA:-../shared/data/camvid}
T=(.venv/bin/segformer-train experiment=camvid "data.root=$DATA")
E=(.venv/bin/segformer-eval experiment=camvid "data.root=$DATA")
last() { ls -d "logs/train/$1"/*/ | tail -1; }

# 1. seen vs unseen drive: train on the train split minus drive 0006R0 (266 frames of 0001TP and
#    0016E5), validate on 0006R0; then evaluate the same weights on the standard val split
#    (101 other frames of 0016E5, a drive it trained on)
"${T[@]}" "${CE[@]}" data.train_split=train budget.minutes=12 run_name=grouped_seen_vs_unseen
ckpt="ckpt_path=$(last grouped_seen_vs_unseen)checkpoints/last.ckpt"
"${E[@]}" "$ckpt" data.train_split=train data.val_groups=null       # standard val (0016E5)
"${E[@]}" "$ckpt" data.train_split=train                            # 0006R0 again

# 2. recipe variants, step-matched (960 steps = what a 12-minute budget planned for the first):
#    train + val minus 0006R0 (367 frames), validated on 0006R0
FIX=(budget.minutes=null trainer.max_steps=960 trainer.val_check_interval=120)
"${T[@]}" "${FIX[@]}" "${CE[@]}" run_name=sel_v0                   # the recipe as it was
"${T[@]}" "${FIX[@]}" "${CE[@]}" run_name=sel_v1 augment=street  # + light/colour/noise shifts
"${T[@]}" "${FIX[@]}" "${CE[@]}" run_name=sel_v2 'data.scale=[720,540]' 'inference.scale=[720,540]'
"${T[@]}" "${FIX[@]}" run_name=sel_v3 'model.loss=[{name:ohem,weight:1.0,thresh:0.7,min_kept:8000}]'
ckpt="ckpt_path=$(last sel_v0)checkpoints/last.ckpt"                 # test-time flip / scales
"${E[@]}" "$ckpt" inference.flip=true
"${E[@]}" "$ckpt" inference.flip=true 'inference.scales=[0.75,1.0,1.25]'

# 3. the chosen recipe (V3 is now the experiment's default) on its 60-minute budget
"${T[@]}"

# 4. the same on the AVX2 class (dispatch restricted: precision auto keeps fp32), and the model to
#    keep, trained on all 468 frames (validation then on seen frames): results/camvid_b0_cpu_avx2.json,
#    results/camvid_b0_all_frames_cpu.json
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "${T[@]}" run_name=camvid_b0_avx2
"${T[@]}" data.val_groups=null run_name=camvid_b0_all_frames

# 5. longer step-matched variants (3000 steps, ~28 minutes each, validation every 375), where the
#    960-step ones could not tell augmentation or averaging apart: results/camvid_grouped_variants_3000.json
FIX=(budget.minutes=null trainer.max_steps=3000 trainer.val_check_interval=375)
"${T[@]}" "${FIX[@]}" run_name=sel30_r0                                      # the recipe as it is
"${T[@]}" "${FIX[@]}" run_name=sel30_r1_ema callbacks=ema                    # + weight EMA
"${T[@]}" "${FIX[@]}" run_name=sel30_r2_nocw model.class_weights=null   # OHEM alone, no weights
"${T[@]}" "${FIX[@]}" run_name=sel30_r3_street augment=street                # + light/colour/noise shifts

# 6. a second held-out drive (leave-one-drive-out: 0001TP, 62 frames, out of training; 406 frames of
#    0006R0 and 0016E5 in it) for the recipe, and more variants on 0006R0, same length:
#    results/camvid_grouped_variants_3000.json
"${T[@]}" "${FIX[@]}" run_name=fold2_r0 'data.val_groups=[0001TP]'         # the recipe, other drive
"${T[@]}" "${FIX[@]}" run_name=sel30_r5_crop240x320 'data.crop_size=[240,320]' data.batch_size=8 \
  'model.loss=[{name:ohem,weight:1.0,thresh:0.7,min_kept:17000}]'              # same pixels a batch
"${T[@]}" "${FIX[@]}" run_name=sel30_r6_regularised optimizer.weight_decay=0.05 model.encoder.drop_path_rate=0.2
"${T[@]}" "${FIX[@]}" run_name=sel30_r4_class_uniform data.class_uniform=0.5  # rare-class crops
"${T[@]}" "${FIX[@]}" run_name=sel30_r7_scale075 'data.scale=[360,270]' 'inference.scale=[360,270]'
