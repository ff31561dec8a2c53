using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace SdFunctions.EndToEnd.Tests;

/// <summary>
/// The app under the real Azure Functions host (../shared/functions-host): an Azurite of its own on free ports, the host
/// unpacked into a temp folder with known function keys, the app's build output with the tiny bundle at 256×256. Stops
/// everything it started by PID (SIGTERM, then SIGKILL; the host's worker child too), also when a test failed.
/// </summary>
public class FunctionsHostFixture : IAsyncLifetime
{
    public const string FunctionKey = "e2e-function-key";
    private const string MasterKey = "e2e-master-key";
    // Azurite's published development account key (not a secret).
    private const string DevKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    private readonly string _work = Directory.CreateTempSubdirectory("sdf-e2e-").FullName;
    private Process? _azurite;
    private Process? _host;
    private readonly List<int> _workers = [];
    private int _blobPort, _queuePort, _tablePort;

    public string BaseUrl { get; private set; } = "";
    public HttpClient Http { get; } = new() { Timeout = TimeSpan.FromSeconds(60) };

    public string StorageConnectionString => ConnectionStringVia(_blobPort);

    /// <summary>The account with its blob endpoint on <paramref name="blobPort"/> (Azurite's, or a proxy's in front of it).</summary>
    protected string ConnectionStringVia(int blobPort) =>
        $"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DevKey};BlobEndpoint=http://127.0.0.1:{blobPort}/devstoreaccount1;" +
        $"QueueEndpoint=http://127.0.0.1:{_queuePort}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{_tablePort}/devstoreaccount1;";

    protected int AzuriteBlobPort => _blobPort;

    /// <summary>Changes the app's settings (the host's environment) before the host starts; a fixture for a fault or a misconfiguration overrides it.</summary>
    protected virtual void Configure(IDictionary<string, string?> settings) { }

    /// <summary>When the app counts as up: health answers ok (a fixture for a broken model accepts its 503 too).</summary>
    protected virtual bool IsReady(HttpResponseMessage health) => health.IsSuccessStatusCode;

    /// <summary>False for a fixture whose app must refuse to start: the host is then ready once the worker has said why.</summary>
    protected virtual bool AppStarts => true;

    /// <summary>The model folder the app loads; a fixture for a broken deployment points it elsewhere.</summary>
    protected virtual string ModelDirectory => Path.Combine(RepoRoot(), "..", "shared", "fixtures", "tiny-sd");

    /// <summary>The side of the square images the app serves (Jobs__Width/Height).</summary>
    public virtual int ImageSize => 256;

    public async Task InitializeAsync()
    {
        try { await StartAsync(); }
        catch
        {
            await DisposeAsync(); // xUnit does not dispose a fixture that failed to start: leave no process behind
            throw;
        }
    }

    private async Task StartAsync()
    {
        await StartAzuriteAsync();
        string archive = Path.Combine(RepoRoot(), "..", "shared", "functions-host", "functions-host-4.1037.0-net10.tgz");
        if (!File.Exists(archive)) throw new FileNotFoundException("The Functions host is missing beside the checkout", archive);
        await RunAsync("tar", ["xzf", archive, "-C", _work]);
        Directory.CreateDirectory(Path.Combine(_work, "debug", "workers"));
        string secrets = Directory.CreateDirectory(Path.Combine(_work, "secrets")).FullName;
        await File.WriteAllTextAsync(Path.Combine(secrets, "host.json"), JsonSerializer.Serialize(new
        {
            masterKey = new { name = "master", value = MasterKey, encrypted = false },
            functionKeys = new[] { new { name = "default", value = FunctionKey, encrypted = false } },
        }));
        await StartHostAsync();
    }

    /// <summary>Starts the host (again) and waits until the app's functions answer.</summary>
    public async Task StartHostAsync()
    {
        int port = FreePort();
        BaseUrl = $"http://127.0.0.1:{port}";
        string app = AppDirectory();
        var start = new ProcessStartInfo("dotnet", ["Microsoft.Azure.WebJobs.Script.WebHost.dll"])
        {
            WorkingDirectory = Path.Combine(_work, "debug"), RedirectStandardOutput = true, RedirectStandardError = true,
        };
        var env = start.Environment;
        env.Remove("CONTAINER_NAME"); // else the host thinks it is on Linux Consumption and refuses host.json's 30-minute timeout
        env["AzureWebJobsScriptRoot"] = app;
        env["FUNCTIONS_WORKER_RUNTIME"] = "dotnet-isolated";
        env["AZURE_FUNCTIONS_ENVIRONMENT"] = "Development";
        env["ASPNETCORE_URLS"] = BaseUrl;
        env["AzureWebJobsStorage"] = StorageConnectionString;
        env["JobsStorage"] = StorageConnectionString;
        env["AzureWebJobsSecretStorageType"] = "files";
        env["FUNCTIONS_SECRETS_PATH"] = Path.Combine(_work, "secrets");
        env["languageWorkers__dotnet-isolated__workerDirectory"] = app;
        // Retries a second apart instead of host.json's 30 s, so a failing job uses its three attempts quickly.
        env["AzureFunctionsJobHost__extensions__queues__visibilityTimeout"] = "00:00:01";
        // A killed host holds the timer's singleton lock until its lease runs out (60 s by default, 15 s at least), and the
        // restarted host tries again for it every minute (15 s at least): the sweep that recovers the killed run waits for both.
        env["AzureFunctionsJobHost__singleton__listenerLockPeriod"] = "00:00:15";
        env["AzureFunctionsJobHost__singleton__listenerLockRecoveryPollingInterval"] = "00:00:15";
        env["Model__Directory"] = ModelDirectory;
        env["Model__CacheDirectory"] = Path.Combine(_work, "cache");
        env["Jobs__Width"] = ImageSize.ToString();
        env["Jobs__Height"] = ImageSize.ToString();
        env["Jobs__ProgressInterval"] = "00:00:00.250";
        // A run that died is seen as dead after 5 s (not a minute), so the sweep picks it up at the next host start.
        env["Jobs__HeartbeatInterval"] = "00:00:00.500";
        env["Jobs__OwnerTimeout"] = "00:00:05";
        Configure(env);
        _host = Process.Start(start)!;
        _host.OutputDataReceived += (_, e) => { if (e.Data is not null) _log.Enqueue(e.Data); };
        _host.ErrorDataReceived += (_, e) => { if (e.Data is not null) _log.Enqueue(e.Data); };
        _host.BeginOutputReadLine();
        _host.BeginErrorReadLine();

        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(90))
        {
            if (_host.HasExited) throw new InvalidOperationException($"The Functions host exited ({_host.ExitCode}): {RecentLog}");
            if (!AppStarts)
            {
                if (_log.Any(l => l.Contains("SdFunctions cannot start"))) { RememberWorkers(); return; }
                await Task.Delay(250);
                continue;
            }
            try
            {
                if (IsReady(await Http.GetAsync($"{BaseUrl}/api/health"))) { RememberWorkers(); return; }
            }
            catch (HttpRequestException) { }
            await Task.Delay(250);
        }
        throw new TimeoutException($"The Functions host did not serve /api/health within 90 s: {RecentLog}");
    }

    // The host's console output (its own logs and the worker's), for failure messages.
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _log = new();
    public string RecentLog => string.Join('\n', _log.TakeLast(40));
    public IEnumerable<string> Log => _log;

    /// <summary>SIGTERM to the host, as a scale-in or a deployment sends it; waits for it and its worker to end.</summary>
    public async Task StopHostAsync()
    {
        if (_host is null) return;
        RememberWorkers();
        await TerminateAsync(_host);
        foreach (int pid in _workers) await TerminateAsync(pid);
        _workers.Clear();
        _host.Dispose();
        _host = null;
    }

    /// <summary>SIGKILL to the host and its worker, as a crash or an out-of-memory kill ends an instance: nothing runs after it.</summary>
    public async Task KillHostAsync()
    {
        if (_host is null) return;
        RememberWorkers();
        foreach (int pid in _workers) kill(pid, SigKill);
        kill(_host.Id, SigKill);
        await _host.WaitForExitAsync();
        foreach (int pid in _workers) await TerminateAsync(pid); // reaped by now; gone either way
        _workers.Clear();
        _host.Dispose();
        _host = null;
    }

    public virtual async Task DisposeAsync()
    {
        await StopHostAsync();
        if (_azurite is not null) { await TerminateAsync(_azurite); _azurite.Dispose(); _azurite = null; } // disposed twice when its start failed
        Http.Dispose();
        try { Directory.Delete(_work, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    // The worker is the host's child: record it while the host lives, so a hard-killed host does not leave it behind.
    private void RememberWorkers()
    {
        if (_host is null) return;
        try
        {
            foreach (string task in Directory.GetDirectories($"/proc/{_host.Id}/task"))
                foreach (string pid in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    if (int.TryParse(pid, out int p) && !_workers.Contains(p)) _workers.Add(p);
        }
        catch (IOException) { } // the host has just exited
        catch (UnauthorizedAccessException) { }
    }

    private async Task StartAzuriteAsync()
    {
        string folder = Path.Combine(RepoRoot(), "tests", "azurite");
        string azurite = Path.Combine(folder, "node_modules", ".bin", "azurite");
        if (!File.Exists(azurite)) await RunAsync("npm", ["ci", "--no-audit", "--no-fund", "--silent"], folder);
        (_blobPort, _queuePort, _tablePort) = (FreePort(), FreePort(), FreePort());
        _azurite = Process.Start(new ProcessStartInfo(azurite,
        [
            "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--location", Path.Combine(_work, "azurite"),
            "--blobHost", "127.0.0.1", "--blobPort", $"{_blobPort}", "--queueHost", "127.0.0.1", "--queuePort", $"{_queuePort}",
            "--tableHost", "127.0.0.1", "--tablePort", $"{_tablePort}",
        ]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        for (int i = 0; i < 200; i++)
        {
            if (await IsListeningAsync(_blobPort) && await IsListeningAsync(_queuePort)) return;
            await Task.Delay(100);
        }
        throw new InvalidOperationException("Azurite did not start.");
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int signal);

    private const int SigTerm = 15;
    private const int SigKill = 9;

    private static async Task TerminateAsync(Process process)
    {
        if (process.HasExited) return;
        kill(process.Id, SigTerm);
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        try { await process.WaitForExitAsync(wait.Token); }
        catch (OperationCanceledException) { process.Kill(entireProcessTree: true); await process.WaitForExitAsync(); }
    }

    private static async Task TerminateAsync(int pid)
    {
        try { using var p = Process.GetProcessById(pid); await TerminateAsync(p); }
        catch (ArgumentException) { } // already gone
    }

    /// <summary>Runs a command to its end; throws with its stderr when it fails.</summary>
    internal static async Task RunAsync(string file, string[] args, string? workingDirectory = null)
    {
        var start = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory ?? "" };
        using var p = Process.Start(start)!;
        string error = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed: {error}");
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static async Task<bool> IsListeningAsync(int port)
    {
        using var client = new TcpClient();
        try { await client.ConnectAsync("127.0.0.1", port).WaitAsync(TimeSpan.FromSeconds(1)); return true; }
        catch (Exception e) when (e is SocketException or TimeoutException) { return false; }
    }

    /// <summary>The app's build output for the configuration these tests were built in (…/bin/Debug/net10.0).</summary>
    private static string AppDirectory()
    {
        var tests = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        string app = Path.Combine(RepoRoot(), "functions", "SdFunctions.Functions", "bin", tests.Parent!.Name, tests.Name);
        if (!File.Exists(Path.Combine(app, "functions.metadata"))) throw new DirectoryNotFoundException($"The app is not built at {app}");
        return app;
    }

    public static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "SdFunctions.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("SdFunctions.sln not found above the test binaries.");
    }
}

[CollectionDefinition(Name)]
public sealed class HostCollection
{
    public const string Name = "functions-host"; // one host at a time on two cores
}
