-- 012_gpu_type: an endpoint may ask for one GPU type (gpus.model as the agents report it, e.g.
-- 'NVIDIA H100 80GB HBM3'); the scheduler then places its replicas on GPUs of that type only.
-- NULL: any device of the endpoint's kind (CPU endpoints, and GPU ones made before types).
-- POST /v1/endpoints fills it in from the model's size when the deploy names none (presets.c).
ALTER TABLE endpoints ADD COLUMN gpu_type text;
