"""The data stage: GSM8K/MATH sources normalised to one schema, the training mixture, prompts,
Great Expectations validation and offline pass-rate filtering."""
