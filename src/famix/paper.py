"""The papers' facts in one place: the numbers FAMix (Fahes et al., CVPR 2024) and PODA (ICCV 2023) fix, and
the results FAMix reports. A leaf (no torch), so that settings, the CLI parser and the style code share them.
"""

# PIN's SGD (method.md section 3): steps, lr per patch (or image), momentum, weight decay
PIN_STEPS, PIN_LR, PIN_MOMENTUM, PIN_WEIGHT_DECAY = 100, 0.1, 0.9, 1e-4

# famix adapt's recipes: poda = the official PIN_aug.py + main.py; famix = ours (batch-independent PIN)
RECIPES = ("poda", "famix")
PODA_BATCH = 16  # PIN_aug.py's --batch_size
PODA_LR = 1.0  # PIN_aug.py's SGD lr, on the batch-mean loss
PODA_EPS = 1e-5  # calc_mean_std's eps, added to the (unbiased) variance
# PODA's main.py fine-tuning (--batch_size 8 --lr 0.01 --total_itrs 2000, crop 768, no data_aug, plain
# cross-entropy, fp32, poly 0.9 to 1e-6, SGD momentum 0.9, weight decay 1e-4), whatever the source run used
PODA_FINE_TUNE = {"crop": 768, "batch_size": 8, "jitter": 0.0, "hflip": 0.0}
PODA_OPTIMIZER = {
    "label_smoothing": 0.0,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "poly_power": 0.9,
    "min_lr": 1e-6,
}
PODA_ITERATIONS, PODA_HEAD_LR = 2000, 0.01

# The paper's result columns (method.md section 7), in its order.
PAPER_COLUMNS = ("C", "B", "M", "S", "ACDC night", "snow", "rain", "fog")
# Reported mIoU (%), RN50 / RN101 + DeepLabv3+ trained on GTA5, mean of 3 runs (method.md section 7).
PAPER = {
    ("gta5", "RN50"): dict(
        zip(PAPER_COLUMNS, (48.15, 45.61, 52.11, 34.23, 14.96, 37.09, 38.66, 40.25), strict=True)
    ),
    ("gta5", "RN101"): {"C": 49.47, "B": 46.40, "M": 51.97},
}
# The paper's targets under a data root (the splits its protocol evaluates on; README "Real use").
PAPER_TARGETS = (
    "cityscapes:{root}/cityscapes:val",
    "bdd100k:{root}/bdd100k:val",
    "mapillary:{root}/mapillary:validation",
    "synthia:{root}/synthia:val",
    "acdc:night:{root}/acdc:val",
    "acdc:snow:{root}/acdc:val",
    "acdc:rain:{root}/acdc:val",
    "acdc:fog:{root}/acdc:val",
)
# The split each paper column is evaluated on (a target on another split is a column of its own).
PAPER_SPLITS = {"mapillary": "validation"}
