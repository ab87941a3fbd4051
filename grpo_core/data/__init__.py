"""The data stage: GSM8K/MATH, the generated arithmetic set and a user's own datasets
(data.custom) normalised to one schema, the training mixture, prompts, Great Expectations
validation and offline pass-rate filtering."""
