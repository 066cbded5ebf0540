"""tiercel.distill: teacher -> student knowledge distillation (torch).

Modules: kinds (the teacher kinds registry), setup (recipe -> teacher, student, tokenizer, data), data (Falcon_SFT
records -> batches), student (student initialisation), teachers (teacher adapters), objective (the student
forward + every loss), losses (divergences and hidden-state losses on tensors), trainer (the loop, checkpoints,
validation), checkpoints (save / resume), cache (top-k teacher logits on disk), answers (generated answers),
onpolicy (student-sampled answers), validation, dist (DDP / FSDP). Importing the package loads no torch.
"""
