"""tolem: a payment gateway that speaks Halyk Bank ePay's merchant protocol."""

__version__ = "0.1.0"
