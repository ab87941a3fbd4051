"""The GRPO algorithm as pure tensor functions (advantages, losses, log-probs, the padded
batch), the experience plumbing of one iteration, and the update step (`learner`)."""
