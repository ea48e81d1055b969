"""Using a trained run's weights: export them (adapter or merged model, tokenizer, model card, hub) and generate
answers next to the reference's. Loads weights (transformers, peft); never imports the trainer."""
