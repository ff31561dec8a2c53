using System.Net;
using System.Net.Sockets;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// A TCP proxy in front of one Azurite port that a test can break: <see cref="Mode.Refuse"/> drops every open connection
/// and resets new ones (storage unreachable), <see cref="Mode.Hang"/> accepts and never answers (the SDK's network
/// timeout), <see cref="Mode.Up"/> forwards. <see cref="OnConnect"/> runs when a client connects (to break things at
/// an exact point of a request sequence).
/// </summary>
public sealed class FaultProxy : IAsyncDisposable
{
    public enum Mode { Up, Refuse, Hang }

    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly int _target;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<TcpClient> _open = [];
    private readonly Lock _lock = new();
    private readonly Task _accepting;
    private volatile Mode _mode = Mode.Up;

    public FaultProxy(int targetPort)
    {
        _target = targetPort;
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public Action? OnConnect { get; set; }
    public int Connections { get; private set; }

    public Mode Current
    {
        get => _mode;
        set
        {
            _mode = value;
            if (value != Mode.Up) CloseOpen();
        }
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await _listener.AcceptTcpClientAsync(_stop.Token); }
            catch (Exception) when (_stop.IsCancellationRequested) { return; }
            Connections++;
            OnConnect?.Invoke();
            switch (_mode)
            {
                case Mode.Refuse:
                    client.Client.LingerState = new LingerOption(true, 0); // a reset, as a dead server's host sends
                    client.Dispose();
                    break;
                case Mode.Hang:
                    Track(client);
                    break;
                default:
                    _ = ForwardAsync(client);
                    break;
            }
        }
    }

    private async Task ForwardAsync(TcpClient client)
    {
        using var server = new TcpClient();
        Track(client);
        try
        {
            await server.ConnectAsync(IPAddress.Loopback, _target, _stop.Token);
            Track(server);
            using var both = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            var up = client.GetStream().CopyToAsync(server.GetStream(), both.Token);
            var down = server.GetStream().CopyToAsync(client.GetStream(), both.Token);
            await Task.WhenAny(up, down);
            await both.CancelAsync();
        }
        catch (Exception) { } // a connection the test broke, or the end of one
        finally
        {
            client.Dispose();
        }
    }

    private void Track(TcpClient client)
    {
        lock (_lock) { _open.RemoveAll(c => c.Client is null || !c.Connected); _open.Add(client); }
    }

    private void CloseOpen()
    {
        lock (_lock)
        {
            foreach (var c in _open)
            {
                try { c.Client.LingerState = new LingerOption(true, 0); } catch (Exception) { }
                c.Dispose();
            }
            _open.Clear();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        CloseOpen();
        try { await _accepting; } catch (Exception) { }
        _stop.Dispose();
    }
}
