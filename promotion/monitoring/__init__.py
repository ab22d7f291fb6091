"""Monitoring: the inference log `promote serve` writes, the ground truth joined to it, and the
reference profiles and drift statistics `promote watch` computes from them.

No mlflow here: this layer reads and writes its own database (SQLAlchemy) and computes with
numpy/scipy; what goes to the registry goes through promotion.registry, from the layers above.
"""
