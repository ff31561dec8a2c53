using System.Diagnostics;
using System.Net.Sockets;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// A real Azurite for the tests: the one already listening on 10000/10001 (CI starts it), or else the pinned
/// one from tests/azurite, started here and stopped when the tests end.
/// </summary>
public sealed class AzuriteFixture : IAsyncLifetime
{
    public const string ConnectionString = "UseDevelopmentStorage=true";
    private Process? _started;
    private string? _dataDir;

    public async Task InitializeAsync()
    {
        if (await IsListeningAsync(10000) && await IsListeningAsync(10001)) return;
        string root = RepoRoot();
        string azurite = Path.Combine(root, "tests", "azurite", "node_modules", ".bin", "azurite");
        if (!File.Exists(azurite)) await NpmCiAsync(Path.Combine(root, "tests", "azurite"));
        if (!File.Exists(azurite))
            throw new InvalidOperationException("Azurite is not running and could not be installed: run `npm ci` in tests/azurite (or start Azurite yourself).");
        _dataDir = Directory.CreateTempSubdirectory("sdf-azurite-").FullName;
        _started = Process.Start(new ProcessStartInfo(azurite,
            ["--silent", "--skipApiVersionCheck", "--location", _dataDir, "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1"])
        { RedirectStandardOutput = true, RedirectStandardError = true })!;
        for (int i = 0; i < 100 && !(await IsListeningAsync(10000) && await IsListeningAsync(10001)); i++) await Task.Delay(100);
        if (!await IsListeningAsync(10001)) throw new InvalidOperationException("Azurite did not start.");
    }

    public Task DisposeAsync()
    {
        if (_started is { HasExited: false }) { _started.Kill(entireProcessTree: true); _started.WaitForExit(5000); }
        _started?.Dispose();
        if (_dataDir is not null) try { Directory.Delete(_dataDir, true); } catch (IOException) { }
        return Task.CompletedTask;
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
