"""Image search with a trained run: a FAISS index over `embed`'s vectors, queried with new images.

    python -m masf_lightning.search index emb.parquet --out INDEX [--kind flat|hnsw] [--space embeddings|features]
    python -m masf_lightning.search query INDEX IMAGE_OR_FOLDER... -k 10 --out DIR [--exclude-same-patient]

`index.py` builds, stores and searches the index; `page.py` draws the results page; `__main__.py` is the CLI.
"""
