using System.Diagnostics;
using System.Net.Sockets;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// A real Azurite for the tests, on ports of their own: the one CI started for them (SDF_AZURITE_BLOB_PORT and
/// SDF_AZURITE_QUEUE_PORT), or else the pinned one from tests/azurite, started here on free ports and stopped when the tests
/// end. Never whatever listens on 10000/10001 (a run-local.sh Azurite holds someone's local jobs).
/// </summary>
public sealed class AzuriteFixture : IAsyncLifetime
{
    // Azurite's published development account key (not a secret).
    public const string DevKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    private static int _blobPort, _queuePort;
    private Process? _started;
    private string? _dataDir;

    /// <summary>Set once, before the first test of the collection runs, and read-only after.</summary>
    public static int BlobPort => _blobPort > 0 ? _blobPort : throw new InvalidOperationException("Azurite is not started: put the test in the Azurite collection.");
    public static int QueuePort => _queuePort > 0 ? _queuePort : throw new InvalidOperationException("Azurite is not started: put the test in the Azurite collection.");

    public static string ConnectionString => ConnectionStringFor(BlobPort, QueuePort);

    public static string ConnectionStringFor(int blobPort, int queuePort) =>
        $"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DevKey};" +
        $"BlobEndpoint=http://127.0.0.1:{blobPort}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{queuePort}/devstoreaccount1;";

    public async Task InitializeAsync()
    {
        if (int.TryParse(Environment.GetEnvironmentVariable("SDF_AZURITE_BLOB_PORT"), out int blob)
            && int.TryParse(Environment.GetEnvironmentVariable("SDF_AZURITE_QUEUE_PORT"), out int queue)
            && await IsListeningAsync(blob) && await IsListeningAsync(queue))
        {
            (_blobPort, _queuePort) = (blob, queue);
            return;
        }
        string root = RepoRoot();
        string azurite = Path.Combine(root, "tests", "azurite", "node_modules", ".bin", "azurite");
        if (!File.Exists(azurite)) await NpmCiAsync(Path.Combine(root, "tests", "azurite"));
        if (!File.Exists(azurite))
            throw new InvalidOperationException("Azurite could not be installed: run `npm ci` in tests/azurite.");
        _dataDir = Directory.CreateTempSubdirectory("sdf-azurite-").FullName;
        (blob, queue, int table) = (FreePort(), FreePort(), FreePort());
        _started = Process.Start(new ProcessStartInfo(azurite,
            ["--silent", "--skipApiVersionCheck", "--disableTelemetry", "--location", _dataDir, "--blobHost", "127.0.0.1", "--blobPort", $"{blob}",
             "--queueHost", "127.0.0.1", "--queuePort", $"{queue}", "--tableHost", "127.0.0.1", "--tablePort", $"{table}"])
        { RedirectStandardOutput = true, RedirectStandardError = true })!;
        for (int i = 0; i < 100 && !(await IsListeningAsync(blob) && await IsListeningAsync(queue)); i++) await Task.Delay(100);
        if (!await IsListeningAsync(queue)) throw new InvalidOperationException("Azurite did not start.");
        (_blobPort, _queuePort) = (blob, queue);
    }

    public Task DisposeAsync()
    {
        if (_started is { HasExited: false }) { _started.Kill(entireProcessTree: true); _started.WaitForExit(5000); }
        _started?.Dispose();
        if (_dataDir is not null) try { Directory.Delete(_dataDir, true); } catch (IOException) { }
        return Task.CompletedTask;
    }

    private static int FreePort()
    {
        var listener = new TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    // The pinned Azurite from tests/azurite/package-lock.json, installed on first use so `dotnet test` needs no other step.
    private static async Task NpmCiAsync(string folder)
    {
        using var npm = Process.Start(new ProcessStartInfo("npm", ["ci", "--no-audit", "--no-fund", "--silent"])
            { WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true })
            ?? throw new InvalidOperationException("npm could not be started; install Node.js or start Azurite yourself.");
        await npm.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(5));
    }

    private static async Task<bool> IsListeningAsync(int port)
    {
        using var client = new TcpClient();
        try { await client.ConnectAsync("127.0.0.1", port).WaitAsync(TimeSpan.FromSeconds(1)); return true; }
        catch (Exception e) when (e is SocketException or TimeoutException) { return false; }
    }

    public static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "SdFunctions.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("SdFunctions.sln not found above the test binaries.");
    }

    public static string TinySd => Path.Combine(RepoRoot(), "..", "shared", "fixtures", "tiny-sd");
    public static string TinyLcm => Path.Combine(RepoRoot(), "..", "shared", "fixtures", "tiny-lcm");
}
