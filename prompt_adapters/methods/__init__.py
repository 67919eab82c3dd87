"""One folder per prompt method: a PEFT config, a tuner layer and a tuner."""
