"""CNN image-classification pipeline stages: plain Python modules with no Airflow import.

Each stage is a function `run(ctx, ...) -> dict` that reads what earlier stages wrote to the
artifact store and writes its own outputs under the run's prefix; the dict it returns is small
(keys, URIs, a few metrics) so it can travel through Airflow XCom.
"""
