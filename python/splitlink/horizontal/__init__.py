"""Horizontal federated learning: FedAvg rounds, secure aggregation, PEFT adapters."""
