"""peftsft: parameter-efficient supervised fine-tuning of language models into chatbots."""

__version__ = "0.1.0"
