"""Defaults shared by every recipe. Every field is overridable as --config.a.b=v; unknown keys are errors."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 42

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "beauty"
    c.data.data_root = ""  # empty: $LRM_DATA_DIR
    c.data.store_root = "stores"  # preprocessed stores are cached here as <dataset>-<protocol>/
    c.data.download = True  # fetch the public files when the network allows
    c.data.protocol = "loo-val"  # or "reference" (train on all but the last, test on the last, no validation)
    c.data.max_len = 50  # history events per row; rows hold max_len + 1 slots (history + target)
    c.data.pack = False  # pack several short users into one row
    c.data.train_windows = "last"  # "last": each user's most recent max_len + 1 train events (the reference);
    # "all": the whole train part in consecutive max_len + 1 chunks, so histories longer than a row still train
    c.data.prefetch = 2

    c.model = ml_collections.ConfigDict()
    c.model.name = "hstu"
    c.model.embed_dim = 64
    c.model.num_blocks = 4
    c.model.num_heads = 4
    c.model.head_dim = 16
    c.model.max_seq_len = 61  # N: position tables and the attention normaliser n (reference: max_len + 11)
    c.model.dropout = 0.5
    c.model.attn_dropout = 0.0
    c.model.use_pos_bias = True
    c.model.use_time_bias = True  # switched off (and recorded) when the data has no timestamps
    c.model.num_time_buckets = 128
    c.model.time_bucket_divisor = 0.301
    c.model.learnable_layernorm = False  # STU: True
    c.model.qk_scale = "none"  # STU: "rsqrt"
    c.model.silu_on = "uvqk"  # STU: "u"
    c.model.attention_impl = "auto"
    c.model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
    c.model.ffn_dim = 64  # SASRec only
    c.model.remat = "none"  # per-block rematerialisation: none | full | dots_saveable | nothing_saveable
    c.model.scan_layers = False  # HSTU: one lax.scan over the blocks (one compiled body for deep stacks)

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "sampled_softmax"  # or "full_softmax"
    c.loss.num_negatives = 512
    c.loss.temperature = 0.05
    c.loss.scoring = "auto"  # sampled softmax: "gather" K rows per position, or "dense" (matmul over V, then pick K)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"  # constant | warmup_cosine | wsd (warmup-stable-decay)
    c.optim.warmup_steps = 0
    c.optim.decay_fraction = 0.2  # wsd: fraction of steps spent in the final linear decay
    c.optim.min_lr_ratio = 0.0
    c.optim.grad_clip_norm = 0.0  # 0 = off (the reference does not clip)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128
    c.train.num_epochs = 201
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.log_every_steps = 50
    c.train.eval_every_epochs = 5.0
    c.train.select_metric = "ndcg@10"  # validation metric that picks the best checkpoint
    c.train.early_stopping_patience = 0  # evaluations without improvement before stopping; 0 = never
    c.train.tensorboard = True

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256
    c.eval.chunk_size = 4096  # items scored per chunk in full-catalogue ranking
    c.eval.max_rank = 2500
    c.eval.max_users = 0  # > 0: evaluate only the first max_users eligible users (fixed subset); 0 = all

    # Parallelism (README "Launching on clusters"): mesh axes (data, fsdp, tensor); the mesh is the per-slice
    # ICI shape times the cross-slice / cross-host DCN shape; one -1 in each fills the rest.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.ici = (-1, 1, 1)
    c.mesh.dcn = (1, 1, 1)
    c.mesh.vocab_over = "fsdp_tensor"  # item-table rows over fsdp x tensor, "all" devices, or "tensor" only

    # Multi-host: empty/-1 = auto-detect (TPU pods, SLURM); set all three to start processes by hand.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # host:port of process 0
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    # Lower + compile the train step for the configured mesh, print per-device memory and FLOPs, exit.
    c.compile_only = False
    c.compile_num_items = 0  # > 0: catalogue size to compile for (no data needed); 0: read the store

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000  # 0 = only at the end (and on SIGTERM)
    c.checkpoint.keep = 2  # last train states kept in checkpoints/
    c.checkpoint.keep_best = 1  # validation-picked parameters kept in best/
    c.checkpoint["async"] = True  # write in the background while training goes on
    return c
