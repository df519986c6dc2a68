"""``trtexec``: its command lines (:mod:`~targets.trtexec.argv`), its logs and JSON exports
(:mod:`~targets.trtexec.log`), and inference through it on real inputs (:mod:`~targets.trtexec.infer`)."""
