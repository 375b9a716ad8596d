"""mortgagellm: train, audit and serve a mortgage-domain LLM with the MortgageLLM recipe on Ray."""

__version__ = "0.1.0"
