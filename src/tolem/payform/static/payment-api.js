/* tolem payment-api.js: ePay's halyk.pay(), halyk.showPaymentWidget() and friends.
 * Links are built exactly as the live script builds them:
 *   <payform>/?params=LZString.compressToEncodedURIComponent(encodeParams(paymentObject))
 * so a shop's code works unchanged against tolem and against ePay. */
var halyk = (function (halyk) {
  "use strict";
  var pageUrl = __TOLEM_PAYFORM_URL__;
  var pageOrigin = new URL(pageUrl).origin;  // as the browser spells event.origin
  var widgetNode;
  var widgetFrame;
  var widgetCallback;

  // encodeParams as ePay's script has it: key=encodeURIComponent(value) joined by "&";
  // a nested object (auth, the token response) becomes an encoded query string.
  function encodeParams(params) {
    if (params === undefined || params === null) { return ""; }
    if (typeof params !== "object") { return "" + params; }
    var result = [];
    for (var name in params) {
      if (name) { result.push(name + "=" + encodeURIComponent(encodeParams(params[name]))); }
    }
    return result.join("&");
  }

  function link(params, flag) {
    return pageUrl + "?params=" + LZString.compressToEncodedURIComponent(encodeParams(params)) +
      (flag || "");
  }

  function pay(params) { window.location.href = link(params); }
  function p2p(params) { window.location.href = link(params, "&isTransfer=true"); }
  function aft(params) { window.location.href = link(params, "&isAFT=true"); }
  function oct(params) { window.location.href = link(params, "&isOCT=true"); }

  function addStyles() {
    if (document.getElementById("tolem-widget-style")) { return; }
    var style = document.createElement("style");
    style.id = "tolem-widget-style";
    style.textContent =
      ".widgetScreen{position:fixed;top:0;bottom:0;left:0;right:0;z-index:1000;" +
      "background-color:rgba(5,5,5,.5);display:flex;justify-content:center;align-items:center}" +
      ".iframeBox{position:relative;width:400px;max-width:100vw;border-radius:4px;" +
      "background-color:#fff;z-index:1010}" +
      ".iframeClass{display:block;width:100%;height:90vh;border:none}" +
      ".iframeBoxClose{position:absolute;top:4px;right:4px;width:32px;height:32px;border:0;" +
      "border-radius:16px;background:#e6eaee;cursor:pointer;font:16px sans-serif;z-index:1020}";
    document.head.appendChild(style);
  }

  function closeWidget(success) {
    if (!widgetNode) { return; }
    window.removeEventListener("message", onMessage, false);
    widgetNode.parentNode.removeChild(widgetNode);
    widgetNode = undefined;
    widgetFrame = undefined;
    var callback = widgetCallback;
    widgetCallback = undefined;
    if (typeof callback === "function") { callback({success: success}); }
  }

  // The page inside the iframe says {"success":true|false} when the payment is over.
  function onMessage(event) {
    if (event.origin !== pageOrigin) { return; }
    if (!widgetFrame || event.source !== widgetFrame.contentWindow) { return; }
    var data = event.data;
    if (typeof data === "string") {
      try { data = JSON.parse(data); } catch (e) { return; }
    }
    if (!data || typeof data.success !== "boolean") { return; }
    closeWidget(data.success === true);
  }

  function showPaymentWidget(params, callback) {
    widgetCallback = callback;
    if (widgetNode) { return; }
    addStyles();
    widgetNode = document.createElement("div");
    widgetNode.className = "widgetScreen";
    var box = document.createElement("div");
    box.className = "iframeBox";
    var close = document.createElement("button");
    close.type = "button";
    close.className = "iframeBoxClose";
    close.setAttribute("aria-label", "Close");
    close.textContent = "\u00d7";
    close.addEventListener("click", function () { closeWidget(false); });
    var iframe = document.createElement("iframe");
    iframe.className = "iframeClass";
    iframe.title = "Payment";
    iframe.src = link(params, "&isShortForm=true");
    widgetFrame = iframe;
    box.appendChild(close);
    box.appendChild(iframe);
    widgetNode.appendChild(box);
    window.addEventListener("message", onMessage, false);
    document.body.appendChild(widgetNode);
  }

  halyk.Config = function () { return {pageUrL: pageUrl}; };
  halyk.pay = pay;
  halyk.cardverification = pay;  // the payment object says paymentType "cardVerification"
  halyk.showPaymentWidget = showPaymentWidget;
  halyk.p2p = p2p;
  halyk.aft = aft;
  halyk.oct = oct;
  return halyk;
}(window.halyk || {}));
window.halyk = halyk;
