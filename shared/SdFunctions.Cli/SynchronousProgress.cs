namespace SdFunctions.Cli;

/// <summary>Reports on the caller's thread, in order (<see cref="Progress{T}"/> posts to the thread pool, out of order).</summary>
internal sealed class SynchronousProgress(Action<string> report) : IProgress<string>
{
    public void Report(string value) => report(value);
}
