"""The task store, by concern: the catalogue of listed files, the residency of their tensors; ``bank.TaskBank``
puts them together with inference."""
