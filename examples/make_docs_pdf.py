"""Write examples/docs/attention.pdf from the text below (run from anywhere: python examples/make_docs_pdf.py).

The PDF is deterministic: fixed creation date and producer, so rebuilding it gives the same bytes. It needs fpdf2
(in the `dev` extra). Its built-in Helvetica font covers Latin-1 only, so this document is in English; the Chinese
documents of the example are Markdown and plain text.
"""
from datetime import datetime, timezone
from pathlib import Path

TITLE = "Attention and the Transformer"
PAGES = [
    """Attention lets a model look at every position of its input when it computes one output. Before attention, \
recurrent networks read a sentence one token at a time and squeezed everything they had read into a single hidden \
state. Long sentences lost their beginnings.

Self-attention compares every token with every other token of the same sequence. Each token is projected into a \
query, a key and a value. The attention weight between two tokens is the softmax of the dot product of the query of \
one with the key of the other, divided by the square root of the key dimension. The output for a token is the \
weighted sum of the values.

The scaling by the square root of the dimension keeps the dot products small. Without it, the softmax saturates and \
the gradients become tiny.""",
    """Multi-head attention runs several attention functions in parallel. Each head has its own projections, so one \
head can follow syntax while another follows coreference. The outputs of the heads are concatenated and projected \
again.

The Transformer was introduced in 2017 in the paper Attention Is All You Need. It uses attention and feed-forward \
layers only, without recurrence. An encoder layer contains a self-attention block and a feed-forward block, each with \
a residual connection and layer normalization.

Attention has no notion of order by itself. Positional encodings add information about the position of each token. \
The original paper used fixed sine and cosine functions, and many newer models use rotary position embeddings.""",
    """A decoder-only model such as GPT uses causal masking. Causal masking hides the future tokens, so each position \
can only attend to the positions before it. This is what makes next-token prediction a fair training task.

The cost of self-attention grows with the square of the sequence length. A sequence of 8192 tokens needs a score \
matrix with about 67 million entries per head. Flash attention computes the same result in blocks and never stores \
the full matrix.

Fine-tuning data for a Transformer is usually a list of conversations. The chat template turns each conversation into \
one token sequence, and the loss is computed only on the tokens of the assistant turns.""",
]


def make_pdf(path: Path) -> Path:
    from fpdf import FPDF
    pdf = FPDF(format='A4')
    pdf.set_creation_date(datetime(2024, 1, 1, tzinfo=timezone.utc))
    pdf.set_producer('dataalchemy examples')
    pdf.set_title(TITLE); pdf.set_author('dataalchemy course')
    pdf.set_margins(20, 20, 20)
    for i, page in enumerate(PAGES):
        pdf.add_page()
        if i == 0:
            pdf.set_font('Helvetica', 'B', 16); pdf.multi_cell(0, 10, TITLE); pdf.ln(4)
        pdf.set_font('Helvetica', size=11)
        for para in page.split('\n\n'):
            pdf.multi_cell(0, 6, para); pdf.ln(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


if __name__ == '__main__':
    print(make_pdf(Path(__file__).resolve().parent / 'docs' / 'attention.pdf'))
