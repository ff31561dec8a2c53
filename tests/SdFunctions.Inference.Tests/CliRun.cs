using SdFunctions.Cli;

namespace SdFunctions.Inference.Tests;

/// <summary>The sdf command line, run in-process with its output captured.</summary>
public static class CliRun
{
    public static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }
}

/// <summary>
/// A writer a test may read while the CLI writes it from another thread: every write and read takes one lock (a bare
/// StringWriter's StringBuilder is not safe to read during a write).
/// </summary>
public sealed class SharedWriter : TextWriter
{
    private readonly System.Text.StringBuilder _text = new();
    private readonly Lock _lock = new();
    public override System.Text.Encoding Encoding => System.Text.Encoding.UTF8;

    public override void Write(char value) { lock (_lock) _text.Append(value); }
    public override void Write(string? value) { lock (_lock) _text.Append(value); }
    public override void Write(char[] buffer, int index, int count) { lock (_lock) _text.Append(buffer, index, count); }
    public override string ToString() { lock (_lock) return _text.ToString(); }
}
