"""What the ONNX tests share: checking that an exported file holds the CAS-ViT
export form (``switch_model_to_deploy(form='export')``), which every exporter of
the package traces.

Test files import it as ``from helpers_onnx import ...`` (pytest puts ``tests/``
on ``sys.path``).
"""
import onnx

# The ops the export form of a CAS-ViT block is made of (opset 20): 1x1 and
# depthwise convolutions, GELU, ReLU, sigmoid, the gate products and residual
# additions, and the 4-D means of the channel gates. The fused form adds 5-D
# Reshapes, Split / Gather / Squeeze (unbind), and a MatMul for the channel gate.
EXPORT_FORM_OPS = {'Conv', 'Gelu', 'Relu', 'Sigmoid', 'Mul', 'Add', 'ReduceMean', 'Constant',
                   'Identity'}


def export_form_problems(path, scope='/backbone/', blocks=None):
    """What in the ONNX file ``path`` is not the CAS-ViT export form: a list of
    messages, empty when it is.

    The nodes of the backbone (names starting with ``scope``; '' for a file of
    the backbone alone) are only of :data:`EXPORT_FORM_OPS` (and the ``Reshape``
    of a global pooling's mean), every ``ReduceMean``
    keeps its dimensions (4-D), and each block has its own ``q`` and ``k`` 1x1
    convolutions and per-branch channel gates (``blocks``: how many blocks, if
    given) and no fused ``qk`` one.
    """
    graph = onnx.load(path).graph
    nodes = [n for n in graph.node if n.name.startswith(scope)]
    problems = []
    if not nodes:
        return [f'no node named {scope}...: not a CAS-ViT file']
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    # a classifier backbone's global pooling: the 4-D mean, then reshape(-1, C)
    pooling = [n for n in nodes if n.op_type == 'Reshape' and made_by.get(n.input[0]) ==
               'ReduceMean']
    others = sorted({n.op_type for n in nodes if n not in pooling} - EXPORT_FORM_OPS)
    if others:
        problems.append(f'ops outside the export form: {others}')
    for node in nodes:
        if node.op_type == 'ReduceMean':
            keep = [a.i for a in node.attribute if a.name == 'keepdims']
            if keep and not keep[0]:
                problems.append(f'{node.name}: a mean that drops dimensions')
    names = [n.name for n in nodes if n.op_type == 'Conv']
    count = {part: sum(f'/{part}/' in name for name in names)
             for part in ('q', 'k', 'qk', 'channel_gate_q', 'channel_gate_k')}
    if count['qk']:
        problems.append(f'{count["qk"]} fused qk convolutions')
    if blocks is not None and any(count[p] != blocks for p in
                                  ('q', 'k', 'channel_gate_q', 'channel_gate_k')):
        problems.append(f'per-branch convolutions {count}, expected {blocks} of each')
    return problems
