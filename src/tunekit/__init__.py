"""tunekit: native-PyTorch LLM fine-tuning driven by Hydra configs."""
__version__ = "0.1.0"
