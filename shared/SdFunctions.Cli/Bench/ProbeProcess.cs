using System.Diagnostics;
using System.Text.Json;

namespace SdFunctions.Cli.Bench;

/// <summary>
/// Runs a <see cref="ProbeRequest"/> in a child <c>sdf bench-probe</c> process: each measurement starts from a fresh
/// process, so its peak RSS, its load time and its first run are its own and not left over from the one before.
/// </summary>
public sealed class ProbeProcess(string probeDirectory, IProgress<string> progress)
{
    public async Task<ProbeResult> RunAsync(string label, ProbeRequest request, CancellationToken ct)
    {
        Directory.CreateDirectory(probeDirectory);
        string requestPath = Path.Combine(probeDirectory, $"{label}.request.json"), resultPath = Path.Combine(probeDirectory, $"{label}.result.json");
        File.Delete(resultPath);
        await File.WriteAllTextAsync(requestPath, JsonSerializer.Serialize(request, BenchProbe.Json), ct);

        var (host, prefix) = SelfCommand();
        var start = new ProcessStartInfo(host) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (string arg in prefix.Concat(["bench-probe", requestPath, resultPath])) start.ArgumentList.Add(arg);
        progress.Report($"{label}: started");
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start {host}.");
        var tail = new Queue<string>();
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not { } line) return;
            lock (tail) { tail.Enqueue(line); if (tail.Count > 20) tail.Dequeue(); }
            progress.Report($"{label}: {line}");
        };
        process.OutputDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        try
        {
            await process.WaitForExitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        if (process.ExitCode != 0 || !File.Exists(resultPath))
            throw new InvalidOperationException($"bench probe '{label}' failed (exit {process.ExitCode}): {string.Join(" | ", tail)}");
        return JsonSerializer.Deserialize<ProbeResult>(await File.ReadAllTextAsync(resultPath, ct), BenchProbe.Json)!;
    }

    /// <summary>How to start this same CLI again: its apphost, or the .NET host with sdf.dll (e.g. from a test host).</summary>
    private static (string Host, string[] Prefix) SelfCommand()
    {
        string entry = typeof(ProbeProcess).Assembly.Location;
        string? current = Environment.ProcessPath;
        string name = Path.GetFileNameWithoutExtension(current ?? "");
        if (current is not null && name == Path.GetFileNameWithoutExtension(entry)) return (current, []);
        if (current is not null && name == "dotnet") return (current, [entry]);
        return (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } dotnet ? dotnet : "dotnet", [entry]);
    }
}
