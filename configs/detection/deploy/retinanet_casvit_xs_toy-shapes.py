_base_ = ['../toy/retinanet_casvit_xs_toy-shapes.py']

# The fused inference model (see docs/deploy.md): loads a checkpoint written by
# tools/model_converters/casvit_reparameterize.py from the config above.
model = dict(backbone=dict(deploy=True))
