"""The hosted payment page: payment-api.js, halyk.pay(), the card form and the widget."""
