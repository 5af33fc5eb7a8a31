"""What training, evaluation, prediction and pretraining share: device, precision, processes, state, metrics."""
