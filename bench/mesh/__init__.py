"""Parts of ``bench/mesh_bench.py``: load clients, process stack, scenarios."""
