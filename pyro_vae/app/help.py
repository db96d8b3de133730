"""The help line of each ``pyro-vae train`` flag, by its Config field (``--help`` reads it; the
default is appended by :func:`~pyro_vae.app.parser.add_config_arguments`)."""

HELP = {
    "dataset": (
        "mnist, fashion-mnist, kmnist, emnist, cifar10, cifar100, svhn, celeba, omniglot "
        "(torchvision), folder:PATH (images; class subfolders are labels) "
        "or npy:PATH (.npy/.npz/.pt array; IMAGES,LABELS)"
    ),
    "image_size": (
        "resize (shorter side) and centre-crop images to N×N (default: their own size, if shared)"
    ),
    "test_fraction": (
        "share of the images split off (fixed seed) as the test set when the source has none"
    ),
    "mixtures": "discretized-logistic likelihood: logistics K in each pixel's mixture",
    "data_dir": "torchvision root, or a folder holding the four IDX files (gzipped or not)",
    "binarize": (
        "dynamic (resampled every batch), static (fixed seed) or none (grey levels); "
        "None: what the likelihood needs (dynamic for bernoulli, none otherwise)"
    ),
    "conv_channels": "--net conv: channels of the residual conv nets at full size (x2, x4 below)",
    "conv_blocks": "--net conv: residual blocks per scale of the conv nets",
    "validation": "hold out the last N training images as a validation split",
    "limit": "use only the first N training images (smoke runs)",
    "test_limit": "use only the first N test images",
    "exclude_class": "drop this label from the training images (anomaly detection)",
    "model": "model name (vae, hierarchical, …)",
    "net": "mlp or conv (default: the model's own: conv for deep-hierarchical, else mlp)",
    "activation": (
        "relu, tanh, elu, gelu, softplus, or gated "
        "(mlp nets: gated dense layers h = (Wx+b)·σ(Vx+c), as in the VampPrior code)"
    ),
    "likelihood": (
        "bernoulli, gaussian, learned-gaussian, sigma-vae, sigma-vae-optimal, "
        "or for 8-bit images (--binarize none; evaluate reports bits_per_dim) "
        "discretized-logistic or categorical"
    ),
    "sigma": "σ of the fixed Gaussian likelihood (initial σ of the learned ones)",
    "hidden_dims": (
        "comma-separated hidden sizes of encoder (decoder mirrors them), e.g. 400 or 300,300"
    ),
    "guide": (
        "guide name; default: the model's own (vae: diagonal, or a flow: iaf, spline, "
        "householder, sylvester, planar, radial; hierarchical: top-down or bottom-up; "
        "relaxed-categorical: categorical; m2, cvae: diagonal)"
    ),
    "flows": "number of flow layers in the guide (>= 1 for a flow guide, 0 for diagonal)",
    "flow_hidden_dims": (
        "comma-separated hidden sizes of each flow layer's network (default 10 x latent-dim)"
    ),
    "prior": (
        "p(z): standard (N(0, I)) or vampprior "
        "(mixture of the guide's posteriors at learned pseudo-inputs; "
        "top layer of --model hierarchical, which then needs --guide top-down)"
    ),
    "pseudo_inputs": "vampprior: number K of learned pseudo-inputs",
    "early_stopping": (
        "stop once the validation ELBO has not improved for this many epochs after the KL warm-up "
        "(needs --validation N); evaluation then uses the best epoch (best.pt)"
    ),
    "time_budget": (
        "minutes of training (epochs, their evaluation and pictures; not the capture before): "
        "the run ends at the epoch end after which one more epoch would pass them, e.g. for "
        "comparisons at equal wall-clock time; --resume with a larger budget continues (0: off)"
    ),
    "tensorboard": "write TensorBoard event files into the run directory (--no-tensorboard: none)",
    "images_every": (
        "TensorBoard: samples and reconstructions every N epochs, and at the last (0: none)"
    ),
    "latent_dims": (
        "comma-separated latent sizes of the hierarchical model, z1 (next to x) first, e.g. 64,32"
    ),
    "elbo": "estimator name: trace, meanfield, iwae, dreg, stl, renyi (α = 0), enum, …",
    "particles": "samples per data point for the estimator (vectorized)",
    "beta": (
        "β-VAE: weight of the latent sites' log-densities (the KL) in model and guide; "
        "trace/meanfield/stl/enum only"
    ),
    "kl_warmup_epochs": (
        "KL warm-up: β rises linearly from 0 to --beta over this many epochs (0: off)"
    ),
    "free_bits": (
        "free bits λ: floor (nats) on the batch-mean KL of each latent dimension "
        "(whole site if not diagonal); 0: off"
    ),
    "kl_balance": (
        "NVAE's KL balancing: while β < 1 (the KL warm-up), weigh each latent group's KL by γ ∝ "
        "its batch-mean KL per latent unit, the γ summing to the number of groups "
        "(hierarchical, deep-hierarchical)"
    ),
    "categories": (
        "relaxed-categorical model: classes C of each categorical latent (--latent-dim of them)"
    ),
    "temperature": "relaxed-categorical model: initial temperature τ of RelaxedOneHotCategorical",
    "min_temperature": "relaxed-categorical model: τ never falls below this",
    "temperature_decay": (
        "relaxed-categorical model: τ ← max(min, τ·decay) after each epoch (1: fixed)"
    ),
    "labeled": (
        "m2 model: number of labeled training images (class-balanced); the rest are unlabeled"
    ),
    "aux_weight": (
        "m2 model: weight of log q(y|x) per labeled image "
        "(default 0.1·N/labeled, Kingma et al. 2014)"
    ),
    "lr_decay": "multiply the learning rate by this every epoch",
    "clip_norm": "clip each parameter's gradient norm",
    "max_bad_steps": (
        "stop after this many NaN/inf steps in a row "
        "(each one is skipped and halves the learning rate)"
    ),
    "device": "auto, cpu, cuda or cuda:N",
    "out": "run directory",
    "eval_particles": "particles for the per-epoch test ELBO",
    "log_every": (
        "update the progress bar, and on a GPU read the NaN guard's counts, every N steps "
        "(each syncs with the device)"
    ),
    "pictures": "write samples/reconstructions/loss pictures at the end (--no-pictures to skip)",
    "fast": (
        "the fast path: auto (trace every pair, compile long runs), compile (always), "
        "trace (never compile) or off (plain Pyro SVI steps)"
    ),
    "scales": (
        "deep-hierarchical model: spatial scales of latent groups "
        "(H/2^S … H/2; H, W divisible by 2^S)"
    ),
    "groups_per_scale": "deep-hierarchical model: latent groups at each scale",
    "hidden_channels": (
        "deep-hierarchical model: channels of the top-down and bottom-up residual paths"
    ),
    "latent_channels": "deep-hierarchical model: channels C_z of each latent group [C_z, h, w]",
    "sample_temperature": (
        "τ scaling the prior's standard deviation when drawing the samples picture "
        "(samples_tτ.png beside samples.png when τ ≠ 1; Gaussian latents)"
    ),
    "skip_threshold": (
        "skip every update whose gradient norm of the loss per image exceeds this (VDVAE), "
        "counted in skipped_updates (default: off)"
    ),
    "weight_ema": (
        "decay d of a moving average of the weights, θ̄ ← d·θ̄ + (1−d)·θ after every step "
        "(VDVAE, e.g. 0.999), used for evaluation and sampling; training goes on from θ (0: off)"
    ),
    "spectral_reg": (
        "NVAE's spectral regularization: λ·Σ σ_max(W) over the conv weights added to each image's "
        "loss (σ by one power-iteration step per training step; e.g. 0.1; 0: off)"
    ),
    "levels": (
        "vq-vae model: 1, or 2 (VQ-VAE-2: top codes at H/4 read by the bottom's encoder, bottom "
        "codes at H/2)"
    ),
    "codebook_size": "vq-vae model: codes K in each level's codebook",
    "code_dim": "vq-vae model: size D of each code vector",
    "commitment": "vq-vae model: weight β of the commitment term Σ‖z − sg(e)‖² per image",
    "codebook": (
        "vq-vae model: ema (codes follow moving averages of their encoder outputs) or loss (codes "
        "learned by the codebook term Σ‖sg(z) − e‖²)"
    ),
    "ema_decay": "vq-vae model, --codebook ema: decay γ of the moving averages",
    "code_restarts": (
        "vq-vae model: after each epoch, set the codes no step chose to encoder outputs, counted "
        "in dead_code_restarts (--no-code-restarts: leave them; usage is still reported)"
    ),
}
