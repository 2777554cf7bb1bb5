import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 8, 2, dropout=0.5)

    def forward(self, x):
        return self.rnn(x)


class Seq2Seq(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        return self.encoder(x)[0]


encoder = Encoder()
model = Seq2Seq(encoder).to("cpu")
optimizer = torch.optim.Adam(model.parameters())
model.apply(lambda m: None)


def train_fn(model, loader):
    model.train()
    for x in loader:
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()


def translate(model, x):
    model.eval()
    with torch.no_grad():
        hidden = model.encoder(x)
    return hidden


loader = [torch.randn(3, 2, 4) for _ in range(2)]
for epoch in range(2):
    train_fn(model, loader)
print(translate(model, torch.randn(3, 1, 4)))
