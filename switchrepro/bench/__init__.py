"""`switchrepro bench`: speed measurements, one module per command.

* timing.py: what every benchmark shares (compiled layer and training steps, medians, paired ratios and
  their intervals);
* moe.py: `bench moe` (layer and whole-model timings, expert parallelism on a mesh);
* attention.py: `bench attention` (selective against standard attention);
* table.py: `bench table` (a table's rows at their real shapes: the time a run would take);
* peer.py, peer_jax.py, peer_hf.py: `bench peer` (switchrepro against Hugging Face transformers, each tool in
  its own worker process).

Nothing is imported here, so a peer worker loads only its own side.
"""
