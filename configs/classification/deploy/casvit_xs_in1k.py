_base_ = ['../casvit_xs_in1k.py']

# The fused inference model (see docs/deploy.md): loads a checkpoint written by
# tools/model_converters/casvit_reparameterize.py from the config above.
model = dict(backbone=dict(deploy=True))
