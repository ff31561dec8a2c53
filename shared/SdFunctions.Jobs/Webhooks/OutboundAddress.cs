using System.Net;
using System.Net.Sockets;

namespace SdFunctions.Jobs.Webhooks;

/// <summary>
/// Where webhooks may go. A client names the URL, so the service must not become a way into its own network (SSRF): https only
/// (http to a loopback address only when <see cref="WebhookOptions.AllowHttpLoopback"/> is on, for tests and local runs), and never an
/// address that is private, loopback, link-local (the cloud metadata endpoint 169.254.169.254), shared (CGNAT), multicast or
/// unspecified — checked on the addresses the name resolves to at connect time (<see cref="ConnectAsync"/>), so a name that
/// resolves differently later (DNS rebinding) is caught too.
/// </summary>
public static class OutboundAddress
{
    public const int MaxUrlLength = 2000;

    /// <summary>Why a URL may not be used (null: it may), from the URL alone: scheme, form, and a literal address's range.</summary>
    public static string? RefuseUrl(string url, bool allowHttpLoopback)
    {
        if (url.Length > MaxUrlLength) return $"At most {MaxUrlLength} characters.";
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("https" or "http")) return "An absolute https URL is required.";
        if (uri.UserInfo.Length > 0) return "The URL may not carry a user name or password.";
        if (uri.Scheme == "http" && !(allowHttpLoopback && IsLoopbackHost(uri))) return "Webhooks are sent over https only.";
        if (IPAddress.TryParse(uri.DnsSafeHost, out var literal) && RefuseAddress(literal, allowHttpLoopback) is { } why) return why;
        return null;
    }

    private static bool IsLoopbackHost(Uri uri) =>
        uri.IsLoopback || (IPAddress.TryParse(uri.DnsSafeHost, out var a) && IPAddress.IsLoopback(a));

    /// <summary>Why an address may not be connected to (null: it may). Loopback only when allowed.</summary>
    public static string? RefuseAddress(IPAddress address, bool allowLoopback)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        if (IPAddress.IsLoopback(address)) return allowLoopback ? null : "It resolves to a loopback address.";
        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            byte[] b = address.GetAddressBytes();
            bool refused = b[0] is 0 or 10 or >= 224 // this network, private, multicast and reserved
                || (b[0] == 100 && b[1] >= 64 && b[1] < 128) // shared address space (CGNAT)
                || (b[0] == 169 && b[1] == 254) // link-local, the metadata endpoint
                || (b[0] == 172 && b[1] >= 16 && b[1] < 32) || (b[0] == 192 && b[1] == 168) // private
                || (b[0] == 192 && b[1] == 0 && b[2] == 0) || (b[0] == 198 && b[1] is 18 or 19); // IETF protocol, benchmarking
            return refused ? $"It resolves to {address}, a private, link-local or reserved address." : null;
        }
        if (address.AddressFamily == AddressFamily.InterNetworkV6)
        {
            byte[] b = address.GetAddressBytes();
            bool refused = address.IsIPv6LinkLocal || address.IsIPv6SiteLocal || address.IsIPv6Multicast || address.Equals(IPAddress.IPv6Any)
                || (b[0] & 0xFE) == 0xFC; // unique local fc00::/7
            return refused ? $"It resolves to {address}, a private, link-local or reserved address." : null;
        }
        return $"It resolves to {address}, which is not an IP address webhooks are sent to.";
    }

    /// <summary>
    /// The handler webhooks are sent with: connects only to addresses <see cref="RefuseAddress"/> allows (resolved here, at connect
    /// time), follows no redirects, keeps no cookies, gives up after <paramref name="timeout"/>.
    /// </summary>
    public static SocketsHttpHandler Handler(bool allowLoopback, TimeSpan timeout) => new()
    {
        AllowAutoRedirect = false, UseCookies = false, UseProxy = false, ConnectTimeout = timeout,
        ConnectCallback = (context, ct) => ConnectAsync(context.DnsEndPoint, allowLoopback, ct),
    };

    private static async ValueTask<Stream> ConnectAsync(DnsEndPoint endpoint, bool allowLoopback, CancellationToken ct)
    {
        var addresses = IPAddress.TryParse(endpoint.Host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(endpoint.Host, ct);
        if (addresses.Length == 0) throw new RefusedAddressException($"{endpoint.Host} does not resolve.");
        // Every address must pass: a name with one private address among public ones could be steered to it.
        foreach (var address in addresses)
            if (RefuseAddress(address, allowLoopback) is { } why) throw new RefusedAddressException($"{endpoint.Host}: {why}");
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(addresses, endpoint.Port, ct);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

/// <summary>A webhook URL whose host is, or resolves to, an address webhooks may not go to.</summary>
public sealed class RefusedAddressException(string message) : Exception(message);
