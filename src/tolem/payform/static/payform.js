/* tolem hosted card payment page: formatting, checks and a single submission.
 *
 * Plain ES2017, no libraries, no eval, no inline styles: the page is served
 * under a strict Content-Security-Policy. The form still posts normally; this
 * script only helps the cardholder type and stops obvious mistakes early. The
 * server validates everything again (and decides whether a card has expired).
 */
(function () {
  "use strict";

  const BRANDS = {
    visa: { label: "VISA", max: 19, cvc: 3 }, // Visa issues 13-, 16- and 19-digit cards
    mastercard: { label: "MASTERCARD", max: 16, cvc: 3 },
    amex: { label: "AMEX", max: 15, cvc: 4, groups: [4, 6, 5] },
    mir: { label: "MIR", max: 19, cvc: 3 },
    unionpay: { label: "UNIONPAY", max: 19, cvc: 3 },
    maestro: { label: "MAESTRO", max: 19, cvc: 3 },
  };
  const UNKNOWN = { label: "", max: 19, cvc: 3 };
  const GROUPS = [4, 4, 4, 4, 3];

  const DEFAULT_MESSAGES = {
    pan: "Check the card number.",
    exp: "Enter the expiry date as MM/YY.",
    cvc: "Check the CVC code.",
    name: "Enter the cardholder name.",
    email: "Check the e-mail address.",
    wait: "Please wait…",
  };

  const EMAIL = /^[^\s@]+@[^\s@.]+(\.[^\s@.]+)+$/;
  const EXPIRY = /^(0[1-9]|1[0-2])\/\d{2}$/;

  /** The brand key for a card number's digits, or "" while it is unknown. */
  function detectBrand(digits) {
    if (digits.charAt(0) === "4") return "visa";
    if (digits.length < 2) return "";
    const p2 = Number(digits.slice(0, 2));
    if (p2 === 34 || p2 === 37) return "amex";
    if (p2 >= 51 && p2 <= 55) return "mastercard";
    if (p2 >= 23 && p2 <= 26) return "mastercard"; // inside 2221–2720 whatever follows
    if (p2 === 62) return "unionpay";
    if (p2 === 50 || (p2 >= 56 && p2 <= 58) || p2 === 63 || p2 === 67) return "maestro";
    if (digits.length < 4) return "";
    const p4 = Number(digits.slice(0, 4));
    if (p4 >= 2200 && p4 <= 2204) return "mir";
    if (p4 >= 2221 && p4 <= 2720) return "mastercard";
    return "";
  }

  function luhn(digits) {
    let sum = 0;
    let double = false;
    for (let i = digits.length - 1; i >= 0; i -= 1) {
      let n = digits.charCodeAt(i) - 48;
      if (double) {
        n *= 2;
        if (n > 9) n -= 9;
      }
      sum += n;
      double = !double;
    }
    return sum % 10 === 0;
  }

  function onlyDigits(text) {
    return text.replace(/\D+/g, "");
  }

  function countDigits(text) {
    return onlyDigits(text).length;
  }

  /** The caret position just after the n-th digit of text (0 → start). */
  function caretAfterDigits(text, n) {
    if (n <= 0) return 0;
    let seen = 0;
    for (let i = 0; i < text.length; i += 1) {
      if (text.charCodeAt(i) >= 48 && text.charCodeAt(i) <= 57) {
        seen += 1;
        if (seen === n) return i + 1;
      }
    }
    return text.length;
  }

  function formatPan(digits, brand) {
    const groups = (BRANDS[brand] && BRANDS[brand].groups) || GROUPS;
    const parts = [];
    let at = 0;
    for (let g = 0; g < groups.length && at < digits.length; g += 1) {
      parts.push(digits.slice(at, at + groups[g]));
      at += groups[g];
    }
    if (at < digits.length) parts.push(digits.slice(at));
    return parts.join(" ");
  }

  function formatExpiry(digits, deleting) {
    if (/^[2-9]/.test(digits)) digits = "0" + digits; // "4" can only be April
    digits = digits.slice(0, 4);
    if (digits.length < 2) return digits;
    if (digits.length === 2) return deleting ? digits : digits + "/";
    return digits.slice(0, 2) + "/" + digits.slice(2);
  }

  function start() {
    const form = document.getElementById("payform");
    if (!form) return;

    const fields = {
      pan: document.getElementById("pan"),
      exp: document.getElementById("exp"),
      cvc: document.getElementById("cvc"),
      name: document.getElementById("name"),
      email: document.getElementById("email"),
    };
    const order = ["pan", "exp", "cvc", "name", "email"];
    const brandBadge = document.getElementById("brand");
    const payButton = document.getElementById("pay");
    const dirty = {};
    const previousValues = new WeakMap();
    let brand = "";
    let submitted = false;

    function message(key) {
      const attribute = "msg" + key.charAt(0).toUpperCase() + key.slice(1);
      return form.dataset[attribute] || DEFAULT_MESSAGES[key];
    }

    function brandInfo() {
      return BRANDS[brand] || UNKNOWN;
    }

    // --- checks: each returns true when the field is acceptable ---------------

    const checks = {
      pan: function (value) {
        const digits = onlyDigits(value);
        return digits.length >= 12 && digits.length <= 19 && luhn(digits);
      },
      exp: function (value) {
        return EXPIRY.test(value.trim());
      },
      cvc: function (value) {
        return /^\d+$/.test(value) && value.length === brandInfo().cvc;
      },
      name: function (value) {
        const name = value.trim();
        return name.length > 0 && name.length <= 100;
      },
      email: function (value) {
        const email = value.trim();
        return email === "" || EMAIL.test(email);
      },
    };

    function errorElement(key) {
      return document.getElementById(key + "-error");
    }

    function showError(key) {
      const input = fields[key];
      const error = errorElement(key);
      if (error) error.textContent = message(key);
      input.setAttribute("aria-invalid", "true");
      input.classList.add("invalid");
    }

    function clearError(key) {
      const input = fields[key];
      const error = errorElement(key);
      if (error) error.textContent = "";
      input.removeAttribute("aria-invalid");
      input.classList.remove("invalid");
    }

    /** Check one field, show or clear its error; true when it is fine. */
    function validate(key) {
      const input = fields[key];
      if (!input) return true;
      if (checks[key](input.value)) {
        clearError(key);
        return true;
      }
      showError(key);
      return false;
    }

    // --- formatting -------------------------------------------------------------

    /**
     * Replace an input's value by a formatted one built from its digits,
     * keeping the caret after the same digit it followed before.
     */
    function reformat(input, event, build) {
      const raw = input.value;
      const caret = input.selectionStart === null ? raw.length : input.selectionStart;
      const atEnd = caret >= raw.length;
      const type = (event && event.inputType) || "";
      const deleting = type.indexOf("delete") === 0;
      let digits = onlyDigits(raw);
      let before = countDigits(raw.slice(0, caret));

      // Backspace or Delete that only removed a separator: remove the digit
      // beside it instead, or the caret would seem stuck on the space.
      const previous = previousValues.get(input) || "";
      if (deleting && digits === onlyDigits(previous) && raw !== previous) {
        if (type === "deleteContentBackward" && before > 0 && before < digits.length) {
          digits = digits.slice(0, before - 1) + digits.slice(before);
          before -= 1;
        } else if (type === "deleteContentForward" && before < digits.length) {
          digits = digits.slice(0, before) + digits.slice(before + 1);
        }
      }

      const result = build(digits, deleting, raw);
      previousValues.set(input, result.value);
      if (result.value === raw) return;
      input.value = result.value;
      if (document.activeElement === input) {
        const shift = result.shift || 0;
        const position = atEnd
          ? result.value.length
          : caretAfterDigits(result.value, Math.min(before + shift, countDigits(result.value)));
        input.setSelectionRange(position, position);
      }
    }

    function setBrand(next) {
      if (next === brand) return;
      brand = next;
      const info = brandInfo();
      if (brandBadge) brandBadge.textContent = info.label;
      if (brand) form.dataset.brand = brand;
      else delete form.dataset.brand;
      if (fields.cvc) {
        fields.cvc.maxLength = info.cvc;
        if (dirty.cvc && fields.cvc.value) validate("cvc");
      }
    }

    function buildPan(digits) {
      const next = detectBrand(digits);
      const max = (BRANDS[next] || UNKNOWN).max;
      digits = digits.slice(0, max);
      setBrand(detectBrand(digits));
      return { value: formatPan(digits, brand) };
    }

    function buildExpiry(digits, deleting, raw) {
      // Autofill and paste: "1/25", "01/2025", "12 / 27".
      const whole = /^\s*(\d{1,2})\s*[/.\-]\s*(\d{2}|\d{4})\s*$/.exec(raw);
      if (whole && Number(whole[1]) > 0) {
        const month = whole[1].length === 1 ? "0" + whole[1] : whole[1];
        return { value: month + "/" + whole[2].slice(-2) };
      }
      // "1/" typed: the cardholder means January.
      if (/^\s*\d\s*\/\s*$/.test(raw) && !deleting && digits !== "0") {
        return { value: "0" + digits + "/", shift: 1 };
      }
      const value = formatExpiry(digits, deleting);
      return { value: value, shift: countDigits(value) > digits.length ? 1 : 0 };
    }

    function buildCvc(digits) {
      return { value: digits.slice(0, brandInfo().cvc) };
    }

    // --- events -----------------------------------------------------------------

    function onInput(key, handler) {
      const input = fields[key];
      if (!input) return;
      input.addEventListener("input", function (event) {
        dirty[key] = true;
        if (handler) handler(event);
        // Clear (or update) an error as soon as the cardholder fixes it.
        if (input.classList.contains("invalid")) validate(key);
      });
      input.addEventListener("blur", function () {
        if (dirty[key] && !submitted) validate(key);
      });
    }

    onInput("pan", function (event) {
      reformat(fields.pan, event, buildPan);
    });
    onInput("exp", function (event) {
      reformat(fields.exp, event, buildExpiry);
    });
    onInput("cvc", function (event) {
      reformat(fields.cvc, event, buildCvc);
    });
    onInput("name", function () {
      const input = fields.name;
      const upper = input.value.toUpperCase();
      if (upper === input.value) return;
      const start = input.selectionStart;
      const end = input.selectionEnd;
      const sameLength = upper.length === input.value.length;
      input.value = upper;
      if (sameLength && document.activeElement === input && start !== null) {
        input.setSelectionRange(start, end);
      }
    });
    onInput("email", null);

    // Values already there (server re-render, browser autofill before we ran).
    if (fields.pan && fields.pan.value) reformat(fields.pan, null, buildPan);
    if (fields.exp && fields.exp.value) reformat(fields.exp, null, buildExpiry);
    if (fields.cvc) fields.cvc.maxLength = brandInfo().cvc;
    if (fields.name) fields.name.maxLength = 100;

    form.addEventListener("submit", function (event) {
      if (submitted) {
        event.preventDefault();
        return;
      }
      let firstInvalid = null;
      for (let i = 0; i < order.length; i += 1) {
        const key = order[i];
        if (!fields[key]) continue;
        if (!validate(key) && !firstInvalid) firstInvalid = fields[key];
      }
      if (firstInvalid) {
        event.preventDefault();
        firstInvalid.focus();
        return;
      }
      // Let this one go through as a normal POST, and no other.
      submitted = true;
      form.classList.add("busy");
      form.setAttribute("aria-busy", "true");
      if (payButton) {
        payButton.disabled = true;
        payButton.textContent = message("wait");
      }
    });

    // Back from the bank's pages via the back/forward cache: the payment has
    // moved on, so ask the server for its real state instead of a stale form.
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) window.location.reload();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
